"""Baselines: valid plans under the same cost model, never better than the exact planner."""

from __future__ import annotations

import random

import pytest
from edgeshard.solver import STRATEGIES, InfeasibleError, plan
from edgeshard.solver.clusterfile import load_cluster
from edgeshard.solver.costs import CostModel
from edgeshard.solver.plan import evaluate
from edgeshard.solver.random_clusters import random_cluster

BASELINES = [s for s in STRATEGIES if s != "edgeshard"]


@pytest.mark.parametrize("seed", range(60))
def test_baselines_are_valid_and_never_beat_the_planner(seed: int) -> None:
    rng = random.Random(seed)
    cluster = random_cluster(rng, rng.randint(2, 6), rng.randint(4, 20), tight_memory=rng.random() < 0.5)
    costs = CostModel(cluster)
    try:
        best = {o: plan(cluster, o) for o in ("latency", "throughput")}
    except InfeasibleError:
        best = {}
    for strategy in BASELINES:
        try:
            result = plan(cluster, "latency", strategy)
        except InfeasibleError:
            continue
        assert evaluate(costs, result.stages) == result.cost
        assert best, f"{strategy} found a plan where the exact planner found none"
        assert result.cost.latency_ns >= best["latency"].cost.latency_ns
        assert result.cost.bottleneck_ns >= best["throughput"].cost.bottleneck_ns


def test_baseline_shapes_on_the_paper_testbed() -> None:
    cluster = load_cluster("paper:llama2-7b-small")
    units = len(cluster.model.units)
    solo = plan(cluster, "latency", "edge-solo")
    assert [(s.device, s.start, s.end) for s in solo.stages] == [("agx-orin-0", 0, units)]
    even = plan(cluster, "latency", "cloud-edge-even")
    assert [(s.device, s.start, s.end) for s in even.stages] == [
        ("agx-orin-0", 0, units // 2),
        ("rtx-3090", units // 2, units),
    ]
    optimal = plan(cluster, "latency", "cloud-edge-opt")
    assert [s.device for s in optimal.stages] == ["agx-orin-0", "rtx-3090"]
    assert optimal.cost.latency_ns <= even.cost.latency_ns
    spread = plan(cluster, "latency", "even")
    sizes = [s.end - s.start for s in spread.stages]
    assert len(spread.stages) == 4 and max(sizes) - min(sizes) <= 1
    proportional = plan(cluster, "latency", "memory-proportional")
    by_device = {s.device: s.end - s.start for s in proportional.stages}
    assert by_device["agx-orin-1"] > by_device["orin-nx-0"]
    greedy = plan(cluster, "latency", "greedy")
    assert greedy.stages[0].device == "agx-orin-0"


def test_unknown_strategy() -> None:
    from edgeshard.solver import SolverError

    with pytest.raises(SolverError, match="unknown strategy"):
        plan(load_cluster("paper:llama2-7b-small"), "latency", "magic")
