"""The view-to-cluster step: the same view gives the same solver cluster on every peer."""

from __future__ import annotations

from edgeshard.discovery.records import LinkMeasure, PeerId, PeerRecord
from edgeshard.peer.daemon.planview import cluster_from_view, round_significant, route_problem
from edgeshard.solver import DeviceId, Stage, Unit, plan
from edgeshard.solver.classes import device_classes
from edgeshard.solver.costs import CostModel


def record(peer: str, unit_ms: tuple[float, ...], memory_bytes: int, links: tuple[LinkMeasure, ...] = ()) -> PeerRecord:
    return PeerRecord(PeerId(peer), 1, 0, f"http://{peer}:7420", "home", "abc", memory_bytes, unit_ms, links=links)


def test_view_to_cluster_is_deterministic_and_merges_near_identical_devices() -> None:
    units = [Unit("embed", 10, 8), Unit("layer.0", 40, 8), Unit("layer.1", 40, 8), Unit("head", 10, 4)]
    view = [
        record("jetson-b", unit_ms=(0.101, 2.02, 2.01, 1.02), memory_bytes=2**30 + 12345),
        record("jetson-a", unit_ms=(0.102, 1.98, 2.03, 1.01), memory_bytes=2**30 + 999),
        record(
            "laptop",
            unit_ms=(0.05, 1.0, 1.0, 0.5),
            memory_bytes=2**31,
            links=(LinkMeasure(PeerId("jetson-a"), 50.0, 4.0),),
        ),
    ]
    cluster = cluster_from_view(view, "m", units, source=PeerId("laptop"))
    again = cluster_from_view(list(reversed(view)), "m", units, source=PeerId("laptop"))
    assert cluster == again
    assert [d.id for d in cluster.devices] == ["jetson-a", "jetson-b", "laptop"]
    assert cluster.network.link(cluster.devices[0].id, cluster.devices[2].id) == (50.0, 2.0)
    classes = device_classes(CostModel(cluster))
    assert sorted(c.size for c in classes) == [1, 1, 1]  # the slow link makes jetson-a different
    jetsons = cluster_from_view([r for r in view if r.peer_id != "laptop"], "m", units)
    assert [c.size for c in device_classes(CostModel(jetsons))] == [2]  # measured apart, planned as one
    assert plan(cluster, "latency").plan_id == plan(again, "latency").plan_id
    assert round_significant(0.0123456) == 0.012 and round_significant(987.0) == 990.0


def test_a_stage_dials_only_the_layouts_members() -> None:
    view = [record(p, (1.0,), 2**30) for p in ("a", "b", "c")]
    stages = (Stage(DeviceId("a"), 0, 2), Stage(DeviceId("b"), 2, 4))
    route, origin = ("http://a:7420", "http://b:7420"), "http://c:7420/origin"
    assert route_problem(stages, view, "b", route, 1, origin, "/origin") is None
    assert route_problem(stages, view, "b", route, 1, "http://198.18.9.9:80/origin", "/origin") == (
        "the origin is not a member of this cluster"
    )
    assert route_problem(stages, view, "b", ("http://a:7420", "http://198.18.9.9:80"), 1, origin, "/origin")
    assert route_problem(stages, view, "b", route, 5, origin, "/origin")  # no such hop
    assert route_problem(stages, view, "b", route, 0, origin, "/origin")  # hop 0 is a's, not ours
    assert route_problem(stages, view, "b", ("http://b:7420", "http://a:7420"), 1, origin, "/origin")  # wrong order
    # While the adopted plan is another layout than the one served: members only.
    assert route_problem(None, view, "b", ("http://c:7420", "http://a:7420"), 0, origin, "/origin") is None
    assert route_problem(None, view, "b", ("http://c:7420", "http://198.18.9.10:80"), 0, origin, "/origin")
