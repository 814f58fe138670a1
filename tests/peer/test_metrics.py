"""/metrics: the figures read at scrape time off a status document and the API's counters, the
histograms observed from replies' step timings, and the route behind the API key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from edgeshard.peer.api.admission import TokenMeter
from edgeshard.peer.api.events import ClusterEvents
from edgeshard.peer.api.handlers import Api
from edgeshard.peer.api.metrics import Metrics
from edgeshard.peer.api.telemetry import ReplyRecord, Telemetry
from edgeshard.peer.pipeline.timing import StepTiming
from edgeshard.peer.wire import StageTime
from prometheus_client.parser import text_string_to_metric_families

A, B = "http://198.18.0.1:7420/stage", "http://198.18.0.2:7420/stage"


def status(ready: bool = True, healths: Sequence[str] = ("alive", "alive", "suspect")) -> dict[str, Any]:
    return {
        "ready": ready,
        "reason": None if ready else "no plan yet",
        "plan": {"layout_id": "L1", "objective": "latency", "stages": []} if ready else None,
        "shard": {"sessions": 2},
        "api": {"queued": 3, "generating": 1, "measured_tps": 7.5, "predicted_tps": 9.25, "tokens": 4},
        "peers": [{"id": str(i), "health": h} for i, h in enumerate(healths)],
    }


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def step(decode: bool, queue: float, compute: float, arrive: tuple[float, float]) -> StepTiming:
    trace = (StageTime(arrive[0], queue, compute, compute + queue), StageTime(arrive[1], 0.0, compute, compute))
    return StepTiming((A, B), 100.0, arrive[1] + compute + 0.004, not decode, trace)


def record(steps: list[StepTiming], tokens: int, outcome: str = "completed") -> ReplyRecord:
    timing = {
        "ttft_ms": 120.0,
        "stages": [{"hop": 0, "url": A, "device": "pi"}, {"hop": 1, "url": B, "device": "laptop"}],
    }
    return ReplyRecord("r", "chat", outcome, 0.0, 1.0, 0.0, 5, tokens, "L1", [], timing, steps)


def parts(document: dict[str, Any] | Exception) -> tuple[Metrics, Telemetry, ClusterEvents, TokenMeter]:
    def read() -> dict[str, Any]:
        if isinstance(document, Exception):
            raise document
        return document

    telemetry, meter = Telemetry(), TokenMeter()
    events = ClusterEvents(read, telemetry)
    return Metrics(read, telemetry, events, meter), telemetry, events, meter


def test_scrape_time_figures_come_from_the_status_and_the_counters() -> None:
    metrics, telemetry, events, meter = parts(status())
    for _ in range(5):
        meter.add()
    telemetry.count("invalid")
    telemetry.count("queue_full")
    telemetry.finish(record([], 5))
    events.look()  # the first look adopts the plan: one plan change
    found = samples(metrics.text())
    assert found[("edgeshard_tokens_generated_total", ())] == 5
    assert found[("edgeshard_requests_total", (("outcome", "invalid"),))] == 1
    assert found[("edgeshard_requests_total", (("outcome", "queue_full"),))] == 1
    assert found[("edgeshard_requests_total", (("outcome", "completed"),))] == 1
    assert found[("edgeshard_requests_total", (("outcome", "draining"),))] == 0  # every outcome, from the start
    assert found[("edgeshard_plan_changes_total", ())] == 1
    assert found[("edgeshard_failovers_total", ())] == 0
    assert found[("edgeshard_ready", ())] == 1
    assert found[("edgeshard_queue_length", ())] == 3
    assert found[("edgeshard_sessions_generating", ())] == 1
    assert found[("edgeshard_stage_sessions", ())] == 2
    assert found[("edgeshard_measured_tokens_per_second", ())] == 7.5
    assert found[("edgeshard_predicted_tokens_per_second", ())] == 9.25
    assert found[("edgeshard_peers", (("health", "alive"),))] == 2
    assert found[("edgeshard_peers", (("health", "suspect"),))] == 1
    assert found[("edgeshard_peers", (("health", "dead"),))] == 0


def test_a_peer_without_a_plan_is_not_ready_and_predicts_nothing() -> None:
    document = status(ready=False)
    del document["api"]["predicted_tps"]
    found = samples(parts(document)[0].text())
    assert found[("edgeshard_ready", ())] == 0
    assert ("edgeshard_predicted_tokens_per_second", ()) not in found
    assert ("edgeshard_measured_tokens_per_second", ()) in found


def test_a_failing_status_still_serves_the_counters() -> None:
    metrics, telemetry, _events, _meter = parts(RuntimeError("no view"))
    telemetry.count("not_ready")
    found = samples(metrics.text())
    assert found[("edgeshard_requests_total", (("outcome", "not_ready"),))] == 1
    assert ("edgeshard_ready", ()) not in found


def test_replies_fill_per_stage_per_link_and_first_token_histograms() -> None:
    metrics, telemetry, _events, _meter = parts(status())
    steps = [
        step(False, 0.0, 0.050, (100.001, 100.060)),  # the prompt: not a per-token figure
        step(True, 0.002, 0.010, (100.001, 100.020)),
        step(True, 0.003, 0.020, (100.002, 100.030)),
    ]
    telemetry.finish(record(steps, 3))
    found = samples(metrics.text())
    pi, laptop = (("device", "pi"), ("stage", "0")), (("device", "laptop"), ("stage", "1"))
    assert found[("edgeshard_stage_compute_seconds_count", pi)] == 2
    assert found[("edgeshard_stage_compute_seconds_count", laptop)] == 2
    assert abs(found[("edgeshard_stage_compute_seconds_sum", pi)] - 0.030) < 1e-9
    assert abs(found[("edgeshard_stage_queue_seconds_sum", pi)] - 0.005) < 1e-9
    assert found[("edgeshard_stage_queue_seconds_bucket", (*pi[:1], ("le", "0.0025"), pi[1]))] == 1
    links = {labels for name, labels in found if name == "edgeshard_link_transfer_seconds_count"}
    assert links == {
        (("from", "origin"), ("to", "pi")),
        (("from", "pi"), ("to", "laptop")),
        (("from", "laptop"), ("to", "origin")),
    }
    # stage 1 saw the steps 19 and 28 ms after stage 0 did, which held them 12 and 23 ms
    between = (("from", "pi"), ("to", "laptop"))
    assert abs(found[("edgeshard_link_transfer_seconds_sum", between)] - (0.007 + 0.005)) < 1e-6
    assert found[("edgeshard_time_to_first_token_seconds_count", ())] == 1
    assert found[("edgeshard_time_to_first_token_seconds_sum", ())] == 0.12


def test_two_apis_in_one_process_keep_their_own_figures() -> None:
    first, second = parts(status())[0], parts(status())[0]
    first.steps.ttft.observe(1.0)
    assert samples(first.text())[("edgeshard_time_to_first_token_seconds_count", ())] == 1
    assert samples(second.text())[("edgeshard_time_to_first_token_seconds_count", ())] == 0


class FakeBackend:
    """Only what /metrics and /v1/status read."""

    model_name = "fake"
    context = 64

    def status(self) -> dict[str, Any]:
        return status()


async def test_the_route_serves_prometheus_text_behind_the_api_key() -> None:
    api = Api(FakeBackend(), api_key="sesame")  # type: ignore[arg-type]
    app = web.Application()
    api.add_routes(app)
    async with TestClient(TestServer(app)) as http:
        refused = await http.get("/metrics")
        assert refused.status == 401
        answer = await http.get("/metrics", headers={"Authorization": "Bearer sesame"})
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=")
        found = samples(await answer.read())
    assert found[("edgeshard_requests_total", (("outcome", "unauthorized"),))] == 1
    assert found[("edgeshard_ready", ())] == 1
