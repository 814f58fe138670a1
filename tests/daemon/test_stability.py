"""Plans that hold still, smoothed link figures, batch-aware costs: pure decisions, plain data."""

from __future__ import annotations

from edgeshard.discovery.records import PeerId, PeerRecord, decode_records, encode_records
from edgeshard.peer.daemon.planview import (
    cluster_from_view,
    entry_groups,
    pipeline_groups,
    pipelined_tps,
    predicted_tps,
    view_of,
)
from edgeshard.peer.daemon.probing import LinkFigures
from edgeshard.peer.daemon.stability import MARGIN, hold_still, served_stages
from edgeshard.peer.model.batches import batch_factor
from edgeshard.solver import DeviceId, Stage, Unit, plan

from ..discovery.signed import signed

GiB = 2**30
UNITS = [
    Unit("embed", GiB // 4, 1024),
    *(Unit(f"layer{i}", GiB // 4, 1024) for i in range(6)),
    Unit("head", GiB // 4, 16),
]
A, B, C = PeerId("a"), PeerId("b"), PeerId("c")


def record(
    peer: PeerId, ms: float = 1.0, serving: str = "", units: tuple[int, ...] = (), memory: int = GiB
) -> PeerRecord:
    unit_ms = (ms,) * len(UNITS)
    scale = (1.0, 1.2, 1.5, 2.0, 3.0)
    address = f"http://{peer}:7420"
    return PeerRecord(
        peer, 1, 0, address, "c", "model", memory, unit_ms, serving=serving, units=units, batch_scale=scale
    )


def addresses(records: list[PeerRecord]) -> dict[PeerId, str]:
    return {r.peer_id: r.address for r in records}


def test_the_served_layout_is_read_from_the_records() -> None:
    records = [record(A, serving="L1", units=(0, 3)), record(B, serving="L1", units=(3, 8)), record(C)]
    assert served_stages(records, len(UNITS)) == (Stage(DeviceId("a"), 0, 3), Stage(DeviceId("b"), 3, 8))
    half = [record(A, serving="L1", units=(0, 3)), record(C, serving="L2", units=(3, 8))]
    assert served_stages(half, len(UNITS)) is None  # no layout is served end to end


def test_a_running_layout_stays_unless_a_new_plan_is_clearly_better() -> None:
    records = [
        record(A, ms=10.0, memory=2 * GiB),
        record(B, ms=10.0, memory=2 * GiB),
        record(C, ms=10.0, memory=2 * GiB),
    ]
    cluster = cluster_from_view(records, "model", UNITS)
    fresh = plan(cluster, "latency")
    assert len(fresh.stages) == 1  # one device holds it all: no transfers
    # The running layout splits it over a and b: two transfers, a few percent slower. Kept.
    running = (Stage(DeviceId("a"), 0, 4), Stage(DeviceId("b"), 4, 8))
    kept = hold_still(cluster, "latency", fresh, running)
    assert kept.stages == running and kept.strategy == "kept"
    assert fresh.cost.latency_ns > (1 - MARGIN) * kept.cost.latency_ns
    # The same layout when a got three times slower: the fresh plan wins.
    slow = [record(A, ms=30.0, memory=2 * GiB), *records[1:]]
    slow_cluster = cluster_from_view(slow, "model", UNITS)
    better = plan(slow_cluster, "latency")
    assert hold_still(slow_cluster, "latency", better, running).stages == better.stages
    # A layout whose peer left is no plan at all.
    gone = cluster_from_view([records[0], records[2]], "model", UNITS)
    other = plan(gone, "latency")
    assert hold_still(gone, "latency", other, running).stages == other.stages


def test_every_peer_reaches_the_same_decision_from_the_same_records() -> None:
    """A peer that just joined has no memory of the running plan; the records give it the same."""
    served = [record(A, serving="L", units=(0, 4)), record(B, serving="L", units=(4, 8)), record(C)]
    decisions = set()
    for own in served:
        view, _excluded = view_of(served, own, UNITS, departures=0)
        fresh = plan(view.cluster, "latency")
        decisions.add(hold_still(view.cluster, "latency", fresh, view.incumbent).stages)
    assert len(decisions) == 1


def test_batch_factor_interpolates_and_batch_costs_are_per_token_of_a_pass() -> None:
    scale = (1.0, 1.2, 1.5, 2.0, 3.0)
    assert batch_factor(scale, 1) == 1.0
    assert batch_factor(scale, 3) == 1.35
    assert batch_factor(scale, 16) == 3.0
    assert batch_factor(scale, 32) == 6.0
    assert batch_factor((), 8) == 1.0
    records = [record(A), record(B), record(C)]
    one = cluster_from_view(records, "model", UNITS)
    eight = cluster_from_view(records, "model", UNITS, batch=8)
    assert eight.devices[0].unit_ms[1] == one.devices[0].unit_ms[1] * 2.0 / 8
    stages = plan(one, "latency").stages
    alone, together = (predicted_tps(records, records[0], UNITS, stages, 1, n) for n in (1, 8))
    assert alone is not None and together is not None
    assert 2.0 < together / alone <= 4.0  # a pass of 8 costs 2× one; the 8 hidden states still travel
    # The same 8 cut into one group per stage: the groups overlap on the separate devices.
    groups = pipeline_groups("throughput", stages, addresses(records))
    pipelined = predicted_tps(records, records[0], UNITS, stages, groups, 8)
    assert groups == len(stages) > 1 and pipelined is not None and pipelined > together


def test_pipelined_groups_overlap_until_the_slowest_stage_is_full() -> None:
    # 10 ms a token round the stages in a pass of 2, 4 ms a token at the slowest stage.
    assert pipelined_tps(10_000_000, 4_000_000, 2, 2) == 100.0  # one group: its trips alone
    assert pipelined_tps(10_000_000, 4_000_000, 4, 2) == 200.0  # two groups overlap fully
    assert pipelined_tps(10_000_000, 4_000_000, 8, 2) == 250.0  # four: the slowest stage is full
    assert pipelined_tps(0, 0, 8, 2) is None


def test_only_the_entry_stage_of_a_throughput_plan_cuts_groups_one_per_host() -> None:
    stages = [Stage(DeviceId("a"), 0, 3), Stage(DeviceId("b"), 3, 5), Stage(DeviceId("c"), 5, 8)]
    where = addresses([record(A), record(B), record(C)])
    assert entry_groups("throughput", stages, where, "a") == 3
    assert entry_groups("throughput", stages, where, "b") == 1
    assert entry_groups("latency", stages, where, "a") == 1
    assert entry_groups("throughput", (), where, "a") == 1
    assert pipeline_groups("latency", stages, where) == 1
    # Three peers of one machine share its cores: overlapping groups would only split the batch.
    local = {peer: f"http://127.0.0.1:{7420 + i}" for i, peer in enumerate(where)}
    assert pipeline_groups("throughput", stages, local) == 1
    assert pipeline_groups("throughput", stages, {**local, C: where[C]}) == 2


def test_link_figures_are_smoothed_and_do_not_follow_one_odd_probe() -> None:
    figures = LinkFigures()
    assert figures.measured(B, 1000.0, 1.0) == (1024.0, 1.0)
    for mbps in (1100.0, 950.0, 1050.0):
        assert figures.measured(B, mbps, 1.0) is None
    # One probe taken under load reads 8× faster (the 1 to 8 Gbps of the report): the median holds.
    assert figures.measured(B, 8000.0, 0.2) is None
    assert figures.published[B] == (1024.0, 1.0)


def test_records_carry_their_units_and_batch_curve() -> None:
    original = signed("a", serving="L", units=(2, 5), batch_scale=(1.0, 1.2, 1.5, 2.0, 3.0))
    (decoded,) = decode_records(encode_records([original]))
    assert decoded.units == (2, 5) and decoded.batch_scale == original.batch_scale


def test_the_running_layout_is_part_of_what_is_planned() -> None:
    """Peers that solved before and after the layout became complete must solve again."""
    records = [record(A), record(B), record(C)]
    before, _ = view_of(records, records[0], UNITS, departures=0)
    served = [record(A, serving="L", units=(0, 4)), record(B, serving="L", units=(4, 8)), record(C)]
    after, _ = view_of(served, served[0], UNITS, departures=0)
    assert before.cluster == after.cluster and before.key != after.key
