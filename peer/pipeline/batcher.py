"""Continuous batching at a stage: every session whose step is ready goes into the next pass.

Steps arrive one by one from the links (a decode step, or a chunk of a prompt) and wait in
arrival order. The batcher never waits to fill a batch: as soon as the worker is free it takes
every ready step (up to `max_batch` sessions, and at most `max_rows` rows so a long prompt chunk
cannot starve decode steps for long) and runs them as one pass; steps that arrive meanwhile form
the next pass. A session has at most one step in flight (its origin waits for each token), so
per-session order holds without further bookkeeping.
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


class Batcher(Generic[R]):
    """Ready steps, and the loop that runs them in passes."""

    def __init__(self, compute: Compute[R], deliver: Deliver[R], max_batch: int, max_rows: int = DEFAULT_MAX_ROWS):
        self._compute = compute
        self._deliver = deliver
        self.max_batch = max_batch
        self.max_rows = max_rows
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

    def take(self) -> list[Step]:
        """The next pass: ready steps in arrival order, within the session and row bounds (the
        first step always goes, however long, so nothing waits forever)."""
        batch: list[Step] = []
        rows = 0
        for session, step in list(self._ready.items()):
            length = int(step.inputs.shape[0])
            if batch and (len(batch) >= self.max_batch or rows + length > self.max_rows):
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
