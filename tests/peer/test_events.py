"""The cluster's events read off successive status documents, and fail-overs off replies."""

from __future__ import annotations

from typing import Any

from edgeshard.peer.api.events import ClusterEvents, changes
from edgeshard.peer.api.telemetry import ReplyRecord, Telemetry


def status(peers: dict[str, str], layout: str | None, ready: bool = True) -> dict[str, Any]:
    plan = None
    if layout:
        stages = [
            {"device": "a", "peer": "1", "start": 0, "end": 16},
            {"device": "b", "peer": "2", "start": 16, "end": 32},
        ]
        plan = {"layout_id": layout, "objective": "latency", "stages": stages}
    return {
        "ready": ready,
        "reason": None if ready else "no plan yet",
        "plan": plan,
        "peers": [{"id": i, "name": f"n{i}", "health": h, "address": f"198.18.0.{i}:7420"} for i, h in peers.items()],
    }


def test_joins_health_departures_plans_and_readiness() -> None:
    first = status({"1": "alive"}, None, ready=False)
    assert changes(None, first) == [("join", "n1 (1) joined at 198.18.0.1:7420")]
    second = status({"1": "alive", "2": "alive"}, "L1")
    kinds = [kind for kind, _ in changes(first, second)]
    assert kinds == ["join", "plan", "ready"]
    assert "a[0:16) → b[16:32)" in changes(first, second)[1][1]
    third = status({"1": "alive", "2": "suspect"}, "L1")
    assert changes(second, third) == [("health", "n2 is suspect (was alive)")]
    fourth = status({"1": "alive"}, None, ready=False)
    assert [kind for kind, _ in changes(third, fourth)] == ["leave", "ready"]
    assert changes(fourth, fourth) == []


def test_the_log_numbers_events_counts_them_and_tells_listeners() -> None:
    documents = iter([status({"1": "alive"}, "L1"), status({"1": "alive", "2": "alive"}, "L2")])
    telemetry = Telemetry()
    events = ClusterEvents(lambda: next(documents), telemetry)
    heard: list[str] = []
    events.listen(lambda event: heard.append(event.kind))
    events.look()
    events.look()
    failover = {"at_token": 3, "seconds": 1.5, "route_wait_s": 1.0, "reason": "link-broken", "old_layout": "L1"}
    record = ReplyRecord("r", "chat", "completed", 0.0, 1.0, 0.0, 5, 9, "L2", [failover | {"new_layout": "L2"}], None)
    telemetry.finish(record)
    assert [e.seq for e in events.events] == list(range(1, len(events.events) + 1))
    assert heard == ["join", "plan", "ready", "join", "plan", "failover"]
    assert events.counts["plan"] == 2 and events.counts["failover"] == 1 and telemetry.failovers == 1
