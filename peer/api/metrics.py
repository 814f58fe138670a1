"""`GET /metrics`: one API's figures in Prometheus' text format (prometheus_client).

Two kinds of figures, on a registry of this API's own (never the process-wide default one, so
several peers in one process, or one test, do not collide):
- read at scrape time (`StatusCollector`) from what the API already keeps: the status document
  (readiness, queue, sessions, peers by health, predicted and measured tokens/s), the
  `Telemetry` (requests by outcome, fail-overs), the `ClusterEvents` counts (plan changes) and the
  `TokenMeter` (tokens generated);
- observed as each reply ends (`Telemetry.listen`): histograms of each stage's queue and compute
  time per decode step, each link's transfer time, and the time to the first token, from the
  reply's step timings (`pipeline/timing.py`).

The route sits behind the API's key guard like every other: Prometheus sends the key as a
bearer token (`authorization: credentials: <key>` in its scrape config).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..pipeline.timing import ORIGIN, StepTiming
from .admission import TokenMeter
from .events import ClusterEvents
from .telemetry import OUTCOMES, ReplyRecord, Telemetry

log = logging.getLogger(__name__)

PREFIX = "edgeshard_"
HEALTHS = ("alive", "suspect", "dead")  # discovery's Health (the API does not import discovery)
# Per-token times run from well under a millisecond (a small stage on a GPU) to seconds (a Pi
# over Wi-Fi); the time to the first token up to a minute (a long prompt on slow devices).
STEP_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def status_families(status: Mapping[str, Any]) -> Iterator[Metric]:
    """The gauges a status document gives (pure): readiness, load, peers by health, tokens/s."""
    ready = GaugeMetricFamily(PREFIX + "ready", "1 when a request would be served now (a ready plan), else 0")
    ready.add_metric([], 1.0 if status.get("ready") else 0.0)
    yield ready
    load = status.get("api") or {}
    shard = status.get("shard") or {}
    for name, value, text in (
        ("queue_length", load.get("queued"), "requests waiting for a session at this API"),
        ("sessions_generating", load.get("generating"), "requests of this API generating now"),
        ("stage_sessions", shard.get("sessions"), "sessions this peer's stage holds (any origin's)"),
        ("measured_tokens_per_second", load.get("measured_tps"), "tokens/s generated through this API lately"),
        ("predicted_tokens_per_second", load.get("predicted_tps"), "tokens/s the plan predicts at this load"),
    ):
        if (number := _number(value)) is not None:  # absent (no plan: no prediction) means no sample
            gauge = GaugeMetricFamily(PREFIX + name, text)
            gauge.add_metric([], number)
            yield gauge
    prefixes = shard.get("prefix_cache") or {}
    for name, key, text in (
        ("prefix_cache_bytes", "bytes", "bytes of KV this peer's stage keeps for reuse"),
        ("prefix_cache_blocks", "blocks", "blocks of KV this peer's stage keeps for reuse"),
        ("prefix_cache_evicted_blocks", "evicted_blocks", "blocks this peer's stage evicted from its prefix cache"),
        ("prefix_cache_matched_blocks", "matched_blocks", "asked-for blocks this peer's stage held"),
        ("prefix_cache_missed_blocks", "missed_blocks", "asked-for blocks this peer's stage did not hold"),
    ):
        if (number := _number(prefixes.get(key))) is not None:
            gauge = GaugeMetricFamily(PREFIX + name, text)
            gauge.add_metric([], number)
            yield gauge
    counts = dict.fromkeys(HEALTHS, 0)
    for peer in status.get("peers") or ():
        health = str(peer.get("health"))
        counts[health] = counts.get(health, 0) + 1
    peers = GaugeMetricFamily(PREFIX + "peers", "peers in this peer's view, by health", labels=["health"])
    for health, count in counts.items():
        peers.add_metric([health], float(count))
    yield peers


class StatusCollector(Collector):
    """The figures read at scrape time: status gauges and the API's own counters."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        telemetry: Telemetry,
        events: ClusterEvents,
        meter: TokenMeter,
    ) -> None:
        self._status, self._telemetry, self._events, self._meter = status, telemetry, events, meter

    def collect(self) -> Iterable[Metric]:
        tokens = CounterMetricFamily(PREFIX + "tokens_generated", "tokens generated through this API")
        tokens.add_metric([], float(self._meter.total))
        yield tokens
        requests = CounterMetricFamily(PREFIX + "requests", "requests to this API by outcome", labels=["outcome"])
        outcomes = self._telemetry.outcomes
        for outcome in (*OUTCOMES, *sorted(set(outcomes) - set(OUTCOMES))):
            requests.add_metric([outcome], float(outcomes[outcome]))
        yield requests
        prompt = CounterMetricFamily(PREFIX + "prompt_tokens", "prompt tokens of the replies this API generated")
        prompt.add_metric([], float(self._telemetry.prompt_tokens))
        yield prompt
        cached = CounterMetricFamily(PREFIX + "prompt_tokens_cached", "of them, taken from the stages' prefix caches")
        cached.add_metric([], float(self._telemetry.cached_tokens))
        yield cached
        failovers = CounterMetricFamily(PREFIX + "failovers", "replies resumed on another route after a fault")
        failovers.add_metric([], float(self._telemetry.failovers))
        yield failovers
        plans = CounterMetricFamily(PREFIX + "plan_changes", "layouts adopted since this API started")
        plans.add_metric([], float(self._events.counts["plan"]))
        yield plans
        try:
            status = self._status()
        except Exception:  # the counters above are still worth serving
            log.exception("metrics: no status")
            return
        yield from status_families(status)


class StepHistograms:
    """Histograms observed from each ended reply's step timings."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def histogram(name: str, text: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, text, labels, registry=registry, buckets=buckets)

        where = ("stage", "device")
        self.compute = histogram("stage_compute_seconds", "a stage's compute per decode step", where, STEP_BUCKETS_S)
        self.queue = histogram("stage_queue_seconds", "a decode step's wait for a stage's pass", where, STEP_BUCKETS_S)
        self.transfer = histogram("link_transfer_seconds", "a decode step on one link", ("from", "to"), STEP_BUCKETS_S)
        self.ttft = histogram("time_to_first_token_seconds", "prompt sent to first token", (), TTFT_BUCKETS_S)

    def observe(self, record: ReplyRecord) -> None:
        """A reply ended: its decode steps' per-stage and per-link times, its time to first token."""
        timing = record.timing or {}
        names = {stage["url"]: stage.get("device") or stage["url"] for stage in timing.get("stages", ())}
        for step in record.steps:
            if not step.prefill and step.trace and len(step.trace) == len(step.route):
                self._step(step, names)
        if record.completion_tokens and timing.get("ttft_ms") is not None:
            self.ttft.observe(timing["ttft_ms"] / 1000)

    def _step(self, step: StepTiming, names: Mapping[str, str]) -> None:
        labels = [names.get(url, url) for url in step.route]
        for hop, (device, stage) in enumerate(zip(labels, step.trace, strict=True)):
            self.compute.labels(str(hop), device).observe(stage.compute_s)
            self.queue.labels(str(hop), device).observe(stage.queue_s)
        ends = [ORIGIN, *labels, ORIGIN]
        for hop, seconds in enumerate(step.transfers()):
            self.transfer.labels(ends[hop], ends[hop + 1]).observe(max(0.0, seconds))  # skewed clocks


class Metrics:
    """One API's metrics: its registry, and the endpoint that serves it."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        telemetry: Telemetry,
        events: ClusterEvents,
        meter: TokenMeter,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(status, telemetry, events, meter))
        self.steps = StepHistograms(self.registry)
        telemetry.listen(self.steps.observe)

    def text(self) -> bytes:
        """The exposition, as a scrape gets it."""
        return generate_latest(self.registry)

    async def endpoint(self, _request: web.Request) -> web.Response:
        """GET /metrics."""
        response = web.Response(body=self.text())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST  # with its version and charset
        return response
