"""What happened to the cluster, as people want to see it: joins, departures, health changes,
plan changes and fail-overs, each a numbered event.

The API does not know the daemon (it serves a `Backend`), so the events are read off the status
document: `ClusterEvents` looks at it every `interval_s` and `changes` (pure) says what differs
from the last look. Fail-overs come from the API's own replies (`Telemetry`). The dashboard's
live feed and /metrics read the same log and counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

from .client import describe_stages
from .telemetry import ReplyRecord, Telemetry

log = logging.getLogger(__name__)

KEEP_EVENTS = 200
INTERVAL_S = 1.0
KINDS = ("join", "leave", "health", "plan", "ready", "failover")


@dataclass(frozen=True)
class Event:
    """One numbered happening."""

    seq: int
    time: float  # wall clock
    kind: str  # one of KINDS
    text: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _peers(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {peer["id"]: peer for peer in status.get("peers") or []}


def _layout(status: dict[str, Any]) -> str | None:
    plan = status.get("plan")
    return plan.get("layout_id") if plan else None


def changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, text) for what differs between two status documents of one peer (pure)."""
    if old is None:
        found = [(kind, text) for kind, text in changes({}, new) if kind != "ready" or new.get("ready")]
        return found
    events: list[tuple[str, str]] = []
    before, after = _peers(old), _peers(new)
    for peer_id, peer in after.items():
        name = peer.get("name") or peer_id
        if peer_id not in before:
            events.append(("join", f"{name} ({peer_id}) joined at {peer.get('address')}"))
        elif before[peer_id].get("health") != peer.get("health"):
            events.append(("health", f"{name} is {peer.get('health')} (was {before[peer_id].get('health')})"))
    for peer_id, peer in before.items():
        if peer_id not in after:
            events.append(("leave", f"{peer.get('name') or peer_id} ({peer_id}) left the view"))
    if _layout(old) != _layout(new) and new.get("plan"):
        plan = new["plan"]
        events.append(("plan", f"layout {plan.get('layout_id')} ({plan.get('objective')}): {describe_stages(plan)}"))
    if bool(old.get("ready")) != bool(new.get("ready")):
        events.append(("ready", "ready" if new.get("ready") else f"not ready: {new.get('reason')}"))
    return events


Listener = Callable[[Event], None]


class ClusterEvents:
    """The event log of one API, kept up to date while the app runs (`add_to`)."""

    def __init__(self, status: Callable[[], dict[str, Any]], telemetry: Telemetry, interval_s: float = INTERVAL_S):
        self._status = status
        self.interval_s = interval_s
        self.events: deque[Event] = deque(maxlen=KEEP_EVENTS)
        self.counts: Counter[str] = Counter({kind: 0 for kind in KINDS})
        self._last: dict[str, Any] | None = None
        self._seq = 0
        self._listeners: list[Listener] = []
        telemetry.listen(self._reply)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every event from now on; returns the way to stop."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def add(self, kind: str, text: str) -> Event:
        """Log an event and tell the listeners."""
        self._seq += 1
        event = Event(self._seq, time.time(), kind, text)
        self.events.append(event)
        self.counts[kind] += 1
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a surface's fault must not stop the log
                log.exception("event listener failed")
        return event

    def look(self) -> dict[str, Any]:
        """Read the status once and log what changed; returns the status read."""
        status = self._status()
        for kind, text in changes(self._last, status):
            self.add(kind, text)
        self._last = status
        return status

    def _reply(self, record: ReplyRecord) -> None:
        for failover in record.failovers:
            self.add(
                "failover",
                f"reply {record.id} resumed at token {failover['at_token']} on layout {failover['new_layout']} "
                f"after {failover['seconds']:.2f} s ({failover['reason']})",
            )

    async def _watch(self) -> None:
        while True:
            try:
                self.look()
            except Exception:  # a status that cannot be built now is tried again next time
                log.exception("cluster events: status failed")
            await asyncio.sleep(self.interval_s)

    async def _context(self, _app: Any) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(self._watch())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def add_to(self, app: Any) -> None:
        """Watch the status for as long as `app` (an aiohttp Application) runs."""
        app.cleanup_ctx.append(self._context)
