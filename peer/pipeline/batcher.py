"""Continuous batching at a stage: every session whose step is ready goes into the next pass.

Steps arrive one by one from the links (a decode step, or a chunk of a prompt) and wait in
arrival order. The batcher never waits to fill a batch: as soon as the worker is free it takes
every ready step (up to `max_batch` sessions, and at most `max_rows` rows so a long prompt chunk
cannot starve decode steps for long) and runs them as one pass; steps that arrive meanwhile form
the next pass. A session has at most one step in flight (its origin waits for each token), so
per-session order holds without further bookkeeping.

Micro-batches (the paper's pipelining): at the entry stage of a throughput plan whose stages run
on G hosts the sessions in flight should form G groups, so each device computes one group while
the others are elsewhere (stages on one host share its cores: there G counts it once, see
daemon/planview.pipeline_groups). Taking every ready step would let them coalesce into one group
that visits the stages in turn, leaving all but one device idle. So the entry stage takes at most
ceil(open sessions / G) steps per pass (`groups` = G): groups rebalance on their own as sessions
come and go, since every pass is cut afresh from whatever is ready. Later stages take every ready
step: where groups meet at a slow stage, one pass of both costs less than two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from ..model.shard import Step

log = logging.getLogger(__name__)

R = TypeVar("R")

Compute = Callable[[Sequence[Step]], Awaitable[R]]
Deliver = Callable[[Sequence[Step], R], Awaitable[None]]

DEFAULT_MAX_ROWS = 512  # rows (tokens) per pass: a prompt chunk plus every decode step


def group_size(sessions: int, groups: int) -> int:
    """Sessions per group when `sessions` form `groups` groups as evenly as they can."""
    return max(1, -(-sessions // max(1, groups)))


class Batcher(Generic[R]):
    """Ready steps, and the loop that runs them in passes."""

    def __init__(
        self,
        compute: Compute[R],
        deliver: Deliver[R],
        max_batch: int,
        max_rows: int = DEFAULT_MAX_ROWS,
        open_sessions: Callable[[], int] | None = None,
    ):
        self._compute = compute
        self._deliver = deliver
        self.max_batch = max_batch
        self.max_rows = max_rows
        self.groups = 1  # micro-batches to cut the open sessions into (the module's doc)
        self._open_sessions = open_sessions  # sessions open here, waiting or not (None: the waiting)
        self._ready: OrderedDict[str, Step] = OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.passes = 0
        self.steps = 0  # steps run so far: steps / passes is the mean batch

    def submit(self, step: Step) -> None:
        """Queue a session's next step (starts the loop on first use)."""
        if step.session in self._ready:
            raise ValueError(f"session {step.session} already has a step waiting")
        self._ready[step.session] = step
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    def drop(self, session: str) -> None:
        """Forget a session's waiting step (it was closed)."""
        self._ready.pop(session, None)

    @property
    def waiting(self) -> int:
        """Steps waiting for the next pass."""
        return len(self._ready)

    @property
    def pass_sessions(self) -> int:
        """Most sessions the next pass takes: `max_batch`, or one group's share."""
        if self.groups <= 1:
            return self.max_batch
        open_now = self._open_sessions() if self._open_sessions is not None else len(self._ready)
        return min(self.max_batch, group_size(max(open_now, len(self._ready)), self.groups))

    def take(self) -> list[Step]:
        """The next pass: ready steps in arrival order, within the session and row bounds (the
        first step always goes, however long, so nothing waits forever)."""
        batch: list[Step] = []
        rows = 0
        most = self.pass_sessions
        for session, step in list(self._ready.items()):
            length = int(step.inputs.shape[0])
            if batch and (len(batch) >= most or rows + length > self.max_rows):
                break
            batch.append(step)
            rows += length
            del self._ready[session]
        return batch

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ready:
                batch = self.take()
                try:
                    result = await self._compute(batch)
                except Exception:  # a fault of ours must not stop every later session
                    log.exception("batch of %d steps failed", len(batch))
                    continue
                self.passes += 1
                self.steps += len(batch)
                await self._deliver(batch, result)

    async def close(self) -> None:
        """Stop the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
