"""Failure detection that tolerates a busy or briefly silent peer: phi-accrual, then death.

Each peer's heartbeat arrivals are tracked (when we first saw each newer heartbeat). phi is
-log10 of the probability that a heartbeat is still this late, under a normal distribution fitted
to the recent intervals (Hayashibara et al., the detector Cassandra and Akka use). A peer in a
long forward pass or behind a Wi-Fi blip becomes *suspect* (phi over `suspect_phi`), which
changes nothing; only a silence past `dead_after_s` seconds, counted from the last heartbeat,
declares it *dead*, which removes it from the view and triggers re-planning. All pure: times are
passed in.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

Health = Literal["alive", "suspect", "dead"]


@dataclass
class PhiAccrual:
    """Heartbeat-arrival history of one peer."""

    window: int = 100
    min_std_s: float = 0.1  # a floor: perfectly regular heartbeats must not make phi explode
    first_interval_s: float = 1.0  # assumed before any interval is known
    intervals: deque[float] = field(default_factory=deque)
    last: float | None = None

    def heartbeat(self, now: float) -> None:
        """A newer heartbeat arrived at `now`."""
        if self.last is not None:
            self.intervals.append(max(0.0, now - self.last))
            while len(self.intervals) > self.window:
                self.intervals.popleft()
        self.last = now

    def phi(self, now: float) -> float:
        """Suspicion level at `now` (0 right after a heartbeat; grows with silence)."""
        if self.last is None:
            return 0.0
        values = list(self.intervals) or [self.first_interval_s]
        mean = sum(values) / len(values)
        variance = sum((v - mean) ** 2 for v in values) / len(values)
        std = max(math.sqrt(variance), self.min_std_s)
        elapsed = now - self.last
        # P(interval > elapsed) for a normal distribution, via the complementary error function.
        probability = 0.5 * math.erfc((elapsed - mean) / (std * math.sqrt(2)))
        return -math.log10(max(probability, 1e-300))


@dataclass(frozen=True)
class FailurePolicy:
    """Thresholds: suspicion is cheap, death is expensive (it re-plans the cluster)."""

    suspect_phi: float = 8.0
    dead_after_s: float = 10.0

    def health(self, detector: PhiAccrual, now: float) -> Health:
        """alive / suspect / dead for a peer at `now`."""
        if detector.last is None:
            return "alive"
        if now - detector.last >= self.dead_after_s:
            return "dead"
        return "suspect" if detector.phi(now) >= self.suspect_phi else "alive"
