"""What an API has served, kept for the surfaces that show it: request outcomes, recent replies
with where their time went, and listeners (the metrics, the dashboard's live feed) told of each
reply as it ends. Plain data and callbacks: no I/O, nothing here can fail a request."""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..pipeline.timing import StepTiming

log = logging.getLogger(__name__)

KEEP_REPLIES = 50

# A request's outcome, as /metrics counts it.
OUTCOMES = ("completed", "failed", "cancelled", "queue_full", "not_ready", "invalid", "unauthorized", "draining")


@dataclass(frozen=True)
class ReplyRecord:
    """One finished request that generated: how it ended and where its time went."""

    id: str
    kind: str  # "chat" or "text"
    outcome: str
    finished: float  # wall clock
    seconds: float  # from admission to the end
    queued_s: float
    prompt_tokens: int
    completion_tokens: int
    layout_id: str
    failovers: list[dict[str, Any]]
    timing: dict[str, Any] | None
    steps: list[StepTiming] = field(default_factory=list, repr=False)  # for the listeners only: not kept
    cached_tokens: int = 0  # prompt tokens taken from the stages' prefix caches

    def to_json(self) -> dict[str, Any]:
        """The record as the dashboard and /v1/replies show it (steps left out)."""
        document = asdict(self)
        del document["steps"]
        return document


ReplyListener = Callable[[ReplyRecord], None]


class Telemetry:
    """Counters and the last KEEP_REPLIES replies of one API."""

    def __init__(self, keep: int = KEEP_REPLIES) -> None:
        self.outcomes: Counter[str] = Counter({outcome: 0 for outcome in OUTCOMES})
        self.replies: deque[ReplyRecord] = deque(maxlen=keep)
        self.failovers = 0
        self.prompt_tokens = self.cached_tokens = 0  # over the replies that generated
        self.started = time.time()
        self._listeners: list[ReplyListener] = []

    def listen(self, listener: ReplyListener) -> Callable[[], None]:
        """Call `listener` with every reply that ends from now on; returns the way to stop."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def count(self, outcome: str) -> None:
        """A request that ended without generating (refused, not ready, malformed)."""
        self.outcomes[outcome] += 1

    def finish(self, record: ReplyRecord) -> None:
        """A request that generated has ended."""
        self.outcomes[record.outcome] += 1
        self.failovers += len(record.failovers)
        self.prompt_tokens += record.prompt_tokens
        self.cached_tokens += record.cached_tokens
        self.replies.append(replace(record, steps=[]))  # a long reply's steps would hold megabytes
        for listener in list(self._listeners):
            try:
                listener(record)
            except Exception:  # a surface's fault must not reach the request
                log.exception("reply listener failed")

    def last(self) -> ReplyRecord | None:
        """The most recent reply, if any."""
        return self.replies[-1] if self.replies else None
