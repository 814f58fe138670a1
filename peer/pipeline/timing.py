"""Where a token's time goes: every stage stamps a step's trace, the origin reads it.

A step (a prompt chunk or one decode token) leaves the origin, passes every stage and comes back
as a `Sampled` frame. Each stage adds a `StageTime` to the frame it sends on: when the step
arrived (wall clock), how long it waited for a pass (queue), how long the pass took (compute,
shared by every session in the pass) and how long the stage held it in all (hold: queue, compute,
then sampling, the copy to the host and encoding). Queue, compute and hold are measured on one
host's monotonic clock, so they are exact. A link's transfer time is the next arrival minus the
previous departure, which mixes two hosts' wall clocks: each link's share is as good as the clocks
agree (`edgeshard doctor` shows the skew), but their sum is exact, because every clock's offset
cancels out of it: Σ transfer = wall − Σ hold.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from ..wire import StageTime, Trace

ORIGIN = "origin"


@dataclass(frozen=True)
class Arrival:
    """A step's arrival at a stage, and the trace it came with."""

    wall: float
    mono: float
    trace: Trace

    @classmethod
    def now(cls, trace: Trace) -> Arrival:
        """Stamped at this moment."""
        return cls(time.time(), time.monotonic(), trace)

    def stamp(self, started: float, ended: float) -> Trace:
        """The trace with this stage's entry: the pass ran from `started` to `ended` (monotonic);
        the hold ends now (the frame is encoded right after)."""
        held = time.monotonic() - self.mono
        entry = StageTime(self.wall, max(0.0, started - self.mono), max(0.0, ended - started), held)
        return (*self.trace, entry)


@dataclass(frozen=True)
class StepTiming:
    """One step as the origin saw it: the route, when it went and came back (wall clock), whether
    it fed the prompt, and the stages' trace."""

    route: tuple[str, ...]
    sent: float
    received: float
    prefill: bool
    trace: Trace

    @property
    def wall_s(self) -> float:
        """From sending the step to its token."""
        return self.received - self.sent

    def transfers(self) -> list[float]:
        """Seconds on each link: origin → stage 0, stage i → i+1, last stage → origin."""
        result, departed = [], self.sent
        for stage in self.trace:
            result.append(stage.arrived - departed)
            departed = stage.arrived + stage.hold_s
        result.append(self.received - departed)
        return result


@dataclass(frozen=True)
class Predicted:
    """The planner's figures for a layout, per token: each stage's compute and the transfer out
    of it (to the next stage; from the last, back to the source)."""

    compute_ms: tuple[float, ...]
    transfer_ms: tuple[float, ...]

    @property
    def ms_per_token(self) -> float:
        return sum(self.compute_ms) + sum(self.transfer_ms)


def _ms(values: Sequence[float]) -> float:
    return round(fmean(values) * 1000, 3) if values else 0.0


def summarize(
    steps: Sequence[StepTiming], names: Mapping[str, str] | None = None, predicted: Predicted | None = None
) -> dict[str, Any] | None:
    """Per-token means over a reply's decode steps on its last route: per stage queue, compute
    and the rest of its hold; per link transfer; beside the planner's prediction when given.
    `names` maps a stage URL to the device's name. None without a traced step."""
    traced = [s for s in steps if s.trace and len(s.trace) == len(s.route)]
    if not traced:
        return None
    route = traced[-1].route
    decode = [s for s in traced if not s.prefill and s.route == route]
    first_decode = next((i for i, s in enumerate(steps) if not s.prefill), len(steps))
    prefill = steps[:first_decode]  # the prompt's chunks up to the first token (not a fail-over's replay)
    names = names or {}
    labels = [names.get(url) or url for url in route]
    stages = []
    for hop, url in enumerate(route):
        times = [s.trace[hop] for s in decode]
        queue, compute = _ms([t.queue_s for t in times]), _ms([t.compute_s for t in times])
        stages.append(
            {
                "hop": hop,
                "url": url,
                "device": names.get(url),
                "queue_ms": queue,
                "compute_ms": compute,
                "other_ms": round(max(0.0, _ms([t.hold_s for t in times]) - queue - compute), 3),
                "predicted_compute_ms": predicted.compute_ms[hop] if predicted else None,
            }
        )
    ends = [ORIGIN, *labels, ORIGIN]
    transfers = [s.transfers() for s in decode]  # once per step, not once per link
    per_link = [_ms([t[i] for t in transfers]) for i in range(len(route) + 1)]
    links = [
        {
            "from": ends[i],
            "to": ends[i + 1],
            "transfer_ms": per_link[i],
            # the planner counts stage-to-stage links and the return to the source, not the request's way in
            "predicted_ms": predicted.transfer_ms[i - 1] if predicted and i > 0 else None,
        }
        for i in range(len(route) + 1)
    ]
    return {
        "steps": len(decode),
        "ttft_ms": round((prefill[-1].received - prefill[0].sent) * 1000, 3) if prefill else None,
        "ms_per_token": _ms([s.wall_s for s in decode]),
        "stages": stages,
        "links": links,
        "transfer_ms": round(sum(per_link), 3),
        "predicted_ms_per_token": round(predicted.ms_per_token, 3) if predicted else None,
    }
