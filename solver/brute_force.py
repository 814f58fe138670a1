"""Brute force over every plan: the reference the exact planner is tested against (tiny inputs).

Every form of every stage's device is tried too, independently of the planner's own rule (each
stage takes its device's fastest form that fits)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations, permutations, product

from .costs import CostModel
from .errors import InvalidPlanError
from .plan import Cost, Stage, evaluate


def all_plans(costs: CostModel) -> Iterator[tuple[tuple[Stage, ...], Cost]]:
    """Every valid plan with its cost: each ordered device sequence × each set of cut points."""
    units, devices = costs.unit_count, range(len(costs.ids))
    for stages_count in range(1, min(len(costs.ids), units) + 1):
        for order in permutations(devices, stages_count):
            if costs.source is not None and order[0] != costs.source:
                continue
            names = [[variant.name for variant in costs.variants[d]] for d in order]
            for cuts in combinations(range(1, units), stages_count - 1):
                bounds = (0, *cuts, units)
                for forms in product(*names):
                    stages = tuple(
                        Stage(costs.ids[d], s, e, f)
                        for d, s, e, f in zip(order, bounds, bounds[1:], forms, strict=False)
                    )
                    try:
                        yield stages, evaluate(costs, stages)
                    except InvalidPlanError:
                        continue
