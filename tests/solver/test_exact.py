"""The exact planner against brute force on many random small clusters."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from edgeshard.solver import InfeasibleError, plan
from edgeshard.solver.costs import CostModel
from edgeshard.solver.random_clusters import random_cluster

from .optimal import assert_optimal

INSTANCES = 240


def _instances() -> list[tuple[int, object]]:
    rng = random.Random(20261126)
    cases = []
    for index in range(INSTANCES):
        devices = rng.randint(1, 5)
        units = rng.randint(2, 12)
        kinds = rng.choice([None, None, max(1, devices - 2)])
        cluster = random_cluster(
            rng, devices, units, kinds=kinds, tight_memory=rng.random() < 0.75, source=rng.random() < 0.7
        )
        cases.append((index, cluster))
    return cases


@pytest.mark.parametrize(("index", "cluster"), _instances(), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_both_objectives_equal_brute_force(index: int, cluster: object) -> None:
    plans = assert_optimal(cluster)  # type: ignore[arg-type]
    if plans is not None:
        assert all(found.optimal for found in plans)


def _with_pass_costs() -> list[tuple[int, object]]:
    rng = random.Random(20261204)
    cases = []
    for index in range(PASS_COST_INSTANCES):
        devices = rng.randint(1, 5)
        units = rng.randint(2, 10)
        kinds = rng.choice([None, max(1, devices - 2)])
        cluster = random_cluster(rng, devices, units, kinds=kinds, tight_memory=rng.random() < 0.75, pass_costs=True)
        cases.append((index, cluster))
    return cases


PASS_COST_INSTANCES = 80


@pytest.mark.parametrize(("index", "cluster"), _with_pass_costs(), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_a_fixed_cost_per_stage_keeps_both_objectives_exact(index: int, cluster: object) -> None:
    """Devices that pay a fixed time per stage (a pass waking their threads): the search's
    tables and bounds still give brute force's optimum."""
    plans = assert_optimal(cluster)  # type: ignore[arg-type]
    if plans is not None:
        assert all(found.optimal for found in plans)


def test_a_fixed_cost_per_stage_is_paid_once_per_stage_and_favours_fewer_stages() -> None:
    rng = random.Random(7)
    cluster = random_cluster(rng, 3, 8, tight_memory=False, source=False)
    costs = CostModel(cluster)
    free = plan(cluster, "latency")
    heavy = replace(cluster, devices=tuple(replace(d, pass_ms=1000.0) for d in cluster.devices))
    heavy_costs = CostModel(heavy)
    assert heavy_costs.compute(0, 0, 3) == costs.compute(0, 0, 3) + 1000 * 10**6
    assert heavy_costs.compute(0, 2, 2) == 0
    assert len(plan(heavy, "latency").stages) == 1 <= len(free.stages)


def test_the_instances_exercise_binding_memory_and_slow_links() -> None:
    """The random set is not trivial: memory forces several stages, links differ, some are infeasible."""
    multi_stage = infeasible = slow_links = 0
    for _, cluster in _instances():
        costs = CostModel(cluster)  # type: ignore[arg-type]
        slow_links += any(link.mbps <= 100 for link in cluster.network.links)  # type: ignore[attr-defined]
        try:
            result = plan(cluster, "latency")  # type: ignore[arg-type]
        except InfeasibleError:
            infeasible += 1
            continue
        fits_alone = any(costs.fits(d, 0, costs.unit_count) for d in range(len(costs.ids)))
        multi_stage += len(result.stages) > 1 and not fits_alone
    assert multi_stage >= 40
    assert infeasible >= 5
    assert slow_links >= 40


def test_same_input_same_plan_and_id() -> None:
    rng = random.Random(5)
    cluster = random_cluster(rng, 12, 42, kinds=3)
    first, second = plan(cluster, "throughput"), plan(cluster, "throughput")
    assert first.stages == second.stages
    assert first.plan_id == second.plan_id
    assert plan(cluster, "latency").plan_id != first.plan_id
