"""The check every brute-force comparison makes: both objectives' plans are valid, report their
evaluated cost, and equal the best plans brute force finds (InfeasibleError where it finds none)."""

from __future__ import annotations

import pytest
from edgeshard.solver import InfeasibleError, Plan, plan
from edgeshard.solver.brute_force import all_plans
from edgeshard.solver.cluster import Cluster
from edgeshard.solver.costs import CostModel
from edgeshard.solver.plan import evaluate


def reference(costs: CostModel) -> tuple[int | None, tuple[int, int] | None]:
    """Brute force: min latency, and min (bottleneck, latency) lexicographically."""
    latency: int | None = None
    throughput: tuple[int, int] | None = None
    for _, cost in all_plans(costs):
        latency = cost.latency_ns if latency is None else min(latency, cost.latency_ns)
        key = (cost.bottleneck_ns, cost.latency_ns)
        throughput = key if throughput is None else min(throughput, key)
    return latency, throughput


def assert_optimal(cluster: Cluster) -> tuple[Plan, Plan] | None:
    """The latency and throughput plans, checked against brute force (None: no plan fits)."""
    costs = CostModel(cluster)
    best_latency, best_throughput = reference(costs)
    if best_latency is None:
        for objective in ("latency", "throughput"):
            with pytest.raises(InfeasibleError):
                plan(cluster, objective)  # type: ignore[arg-type]
        return None
    latency_plan = plan(cluster, "latency")
    throughput_plan = plan(cluster, "throughput")
    # Valid under the cost model, and the reported cost is the evaluated one.
    assert evaluate(costs, latency_plan.stages) == latency_plan.cost
    assert evaluate(costs, throughput_plan.stages) == throughput_plan.cost
    assert latency_plan.cost.latency_ns == best_latency
    # Throughput: least bottleneck, and among those the least latency.
    assert (throughput_plan.cost.bottleneck_ns, throughput_plan.cost.latency_ns) == best_throughput
    return latency_plan, throughput_plan
