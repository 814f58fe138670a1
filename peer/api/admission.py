"""Admission at the origin: as many generations as the stages hold, the rest wait in order.

A request takes a slot for as long as it generates. With every slot taken it waits in a FIFO
queue; with the queue full it is refused at once (HTTP 429 with `Retry-After`), so the stages
never see more sessions than they were sized for and a burst of clients is served in arrival
order instead of spinning on "busy". A request that goes away while queued or generating gives
its place back at once. A peer that is stopping `close`s admission: new and queued requests are
refused (`ShuttingDown`, HTTP 503: the client goes to another peer), those generating finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator

DEFAULT_REQUEST_S = 10.0  # Retry-After guess before any request has finished
SMOOTHING = 0.2  # weight of the newest request time in the running mean


class QueueFull(Exception):
    """Every slot is taken and the queue is full."""

    def __init__(self, retry_after_s: int, queued: int) -> None:
        super().__init__(f"{queued} requests are already waiting; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class ShuttingDown(Exception):
    """This peer is stopping: it admits no more requests."""

    def __init__(self) -> None:
        super().__init__("this peer is shutting down; send the request to another peer")


class Admission:
    """`capacity` concurrent generations and up to `queue_bound` waiting ones."""

    def __init__(self, capacity: int, queue_bound: int) -> None:
        if capacity < 1 or queue_bound < 0:
            raise ValueError("capacity >= 1 and queue_bound >= 0")
        self.capacity = capacity
        self.queue_bound = queue_bound
        self.active = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self.mean_request_s = DEFAULT_REQUEST_S
        self.refused = 0
        self.draining = False  # closed: refuse what comes, let what generates finish

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiting)

    def retry_after_s(self) -> int:
        """When a refused client may find room: the queue ahead drained at the running pace."""
        rounds = (self.queued + 1) / self.capacity
        return max(1, math.ceil(rounds * self.mean_request_s))

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold a slot for the body; yields the seconds spent queued. QueueFull when refused,
        ShuttingDown once closed (also for a request still queued when it closes)."""
        arrived = time.monotonic()
        if self.draining:
            raise ShuttingDown()
        if self.active < self.capacity and not self._waiting:
            self.active += 1
        elif len(self._waiting) >= self.queue_bound:
            self.refused += 1
            raise QueueFull(self.retry_after_s(), self.queued)
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(turn)
            try:
                await turn  # the slot is handed over by _release, already counted in `active`
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled() and turn.exception() is None:
                    self._release()  # handed over as we were cancelled: pass it on
                else:
                    with contextlib.suppress(ValueError):  # _release may have skipped it already
                        self._waiting.remove(turn)
                raise
        started = time.monotonic()
        try:
            yield started - arrived
        finally:
            elapsed = time.monotonic() - started
            self.mean_request_s += SMOOTHING * (elapsed - self.mean_request_s)
            self._release()

    def close(self) -> None:
        """Admit nothing more: requests waiting in the queue are refused now, new ones at once;
        those holding a slot go on."""
        self.draining = True
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_exception(ShuttingDown())

    def _release(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot moves to the next in line
                return
        self.active -= 1


class TokenMeter:
    """Tokens generated through this API per second, over a sliding window."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self.total = 0

    def add(self, now: float | None = None) -> None:
        """One token went out."""
        self._times.append(time.monotonic() if now is None else now)
        self.total += 1

    def rate(self, now: float | None = None) -> float:
        """Tokens per second over the last window."""
        now = time.monotonic() if now is None else now
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
        return len(self._times) / self.window_s
