"""Brute force over every plan: the reference the exact planner is tested against (tiny inputs)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations, permutations

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
            for cuts in combinations(range(1, units), stages_count - 1):
                bounds = (0, *cuts, units)
                stages = tuple(Stage(costs.ids[d], s, e) for d, s, e in zip(order, bounds, bounds[1:], strict=False))
                try:
                    yield stages, evaluate(costs, stages)
                except InvalidPlanError:
                    continue
