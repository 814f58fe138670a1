"""The cost model of docs/ARCHITECTURE.md on hand-computed examples."""

from __future__ import annotations

import pytest
from edgeshard.solver import Cluster, Device, DeviceId, InvalidPlanError, Link, Model, Network, Stage, Unit
from edgeshard.solver.costs import CostModel
from edgeshard.solver.plan import evaluate

A, B, C = DeviceId("a"), DeviceId("b"), DeviceId("c")


def _cluster(source: DeviceId | None = A) -> Cluster:
    units = (Unit("embed", 100, 1000), Unit("layer", 200, 1000), Unit("head", 100, 10))
    return Cluster(
        model=Model("m", units),
        devices=(
            Device(A, 300, (1.0, 10.0, 5.0)),
            Device(B, 250, (0.5, 2.0, 1.0)),
            Device(C, 400, (1.0, 4.0, 2.0)),
        ),
        # 8 Mbps: 1000 bytes take 1 ms; 80 Mbps between a and c: 0.1 ms.
        network=Network(8.0, 0.5, (Link(A, C, 80.0, 0.25),)),
        source=source,
    )


def test_latency_and_bottleneck_by_hand() -> None:
    costs = CostModel(_cluster())
    cost = evaluate(costs, [Stage(A, 0, 1), Stage(B, 1, 2), Stage(C, 2, 3)])
    # compute 1 + 2 + 2; a→b 1000 B at 8 Mbps = 1 ms + 0.5; b→c 1 + 0.5; c→a 10 B at 80 Mbps = 0.001 + 0.25
    assert cost.latency_ns == 5_000_000 + 1_500_000 + 1_500_000 + 251_000
    assert cost.bottleneck_ns == 2_000_000


def test_single_stage_has_no_transfers() -> None:
    costs = CostModel(_cluster(source=C))
    cost = evaluate(costs, [Stage(C, 0, 3)])
    assert cost.latency_ns == cost.bottleneck_ns == 7_000_000


def test_without_source_output_returns_to_stage_zero() -> None:
    costs = CostModel(_cluster(source=None))
    cost = evaluate(costs, [Stage(C, 0, 2), Stage(B, 2, 3)])
    # c computes 5, c→b 1000 B at 8 Mbps = 1 + 0.5, b computes 1, b→c 10 B = 0.01 + 0.5
    assert cost.latency_ns == 5_000_000 + 1_500_000 + 1_000_000 + 510_000
    assert cost.bottleneck_ns == 5_000_000


@pytest.mark.parametrize(
    ("stages", "problem"),
    [
        ([], "at least one stage"),
        ([Stage(A, 0, 1), Stage(B, 1, 3)], "memory"),
        ([Stage(A, 0, 1), Stage(A, 1, 3)], "more than one stage"),
        ([Stage(A, 0, 1), Stage(C, 2, 3)], "does not continue"),
        ([Stage(A, 0, 1), Stage(C, 1, 2)], "cover"),
        ([Stage(C, 0, 3)], "source"),
        ([Stage(DeviceId("z"), 0, 3)], "not a device"),
    ],
)
def test_invalid_plans_are_rejected(stages: list[Stage], problem: str) -> None:
    with pytest.raises(InvalidPlanError, match=problem):
        evaluate(CostModel(_cluster()), stages)


def test_memory_bound_is_inclusive() -> None:
    costs = CostModel(_cluster())
    assert costs.fits(0, 0, 2)  # 300 bytes on a 300-byte device
    assert not costs.fits(1, 0, 2)
