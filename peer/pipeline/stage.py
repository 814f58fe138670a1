"""A stage server: receives frames, runs its shard off the loop, forwards the result.

Theory of operation. A session is opened by an `Open` frame that carries the route (every
stage's URL), this stage's hop index and the origin's URL; each stage remembers where the
session goes next (its `SessionRoute`) and forwards the `Open` down the route. Stage 0 then
receives `InputIds`, every other stage `Hidden`. A step does not run when its frame arrives: it
joins the `Batcher`, which runs every ready session's step in one pass on the process's one
compute thread (model/compute.py: torch, the device-to-host copy and the encoding of the
outgoing frame never run on the event loop, so heartbeats and other links stay on time). The
pass's outputs go on as `Hidden`, or, on the last stage, are sampled per session and sent to
the origin as `Sampled`. A session has at most one step in flight (the origin waits for each
token), so per-session order holds. An `Open` that asks for prefix reuse first copies the
blocks this stage holds into the session's cache (on the worker) and passes on the keys every
stage so far holds; the last stage answers the origin with `Reused`. Any fault in a frame is
answered with an `Error` frame naming the session; the stage keeps serving.
A session ends with its `Close`, with the link it came over, or with the shard it ran on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import psutil
import torch
from aiohttp import web

from .. import wire
from ..errors import ProtocolError, StageError
from ..model.compute import on_compute, submit_compute
from ..model.grammar import GrammarError, Grammars, Matcher
from ..model.shard import SessionError, Shard, Step
from ..wire import Close, Error, Frame, Hidden, InputIds, Open, Reused, Sampled
from .batcher import Batcher
from .hidden import hidden_tensor
from .links import STAGE_PATH, Links, Reply, Sign, frame_endpoint
from .passes import Outbound, SessionRoute, run_pass
from .timing import Arrival

# (route, hop, origin) → why an Open is refused, or None
Admit = Callable[[tuple[str, ...], int, str], str | None]
Closing = asyncio.Future[None] | None  # a session's cache close, queued on the compute thread
Forgotten = tuple[SessionRoute | None, Closing, tuple[bytes, ...]]  # its route, its close, the blocks kept

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 30.0
T = TypeVar("T")


class StageServer:
    """One shard behind an aiohttp WebSocket endpoint.

    `layout_id` None accepts every session (a fixed local cluster); a daemon sets the layout it
    serves, and an `Open` for any other layout is answered "stale-plan" rather than computed
    with units the sender does not expect. `shard` None: this peer holds no units at the moment.
    """

    def __init__(
        self,
        shard: Shard | None,
        links: Links | None = None,
        max_sessions: int = 64,
        layout_id: str | None = None,
        sign: Sign | None = None,
        admit: Admit | None = None,
        grammars: Grammars | None = None,
    ) -> None:
        self.shard = shard
        self.layout_id = layout_id
        self.admit = admit  # vets an Open's route and origin before this stage dials them
        self.links = links or Links(on_frame=self._on_returned, on_close=self._on_link_closed, sign=sign)
        self.routes: dict[str, SessionRoute] = {}
        self._arrivals: dict[str, Arrival] = {}  # each waiting step's arrival, for its trace
        self.max_sessions = max_sessions
        self.batcher: Batcher[list[Outbound | None]] = Batcher(
            self._compute, self._deliver, max_batch=max_sessions, open_sessions=lambda: len(self.routes)
        )
        self._sending: set[asyncio.Task[None]] = set()
        self._storing: set[asyncio.Future[None]] = set()  # closes that keep blocks, queued on the worker
        self._closing = False
        self.grammars = grammars  # compiles the grammars of constrained answers (last stage)

    async def serve(self, shard: Shard | None, layout_id: str) -> None:
        """Serve another shard for `layout_id`. Sessions of the old shard end (their caches hold
        other layers, so continuing them would compute garbage) and their origins hear it at
        once; with the same shard, sessions go on (a layout change that keeps these units)."""
        dropped: dict[str, SessionRoute] = {}
        if shard is not self.shard:
            dropped, self.routes = self.routes, {}
            for session in dropped:
                self.batcher.drop(session)
                self._arrivals.pop(session, None)
        self.shard, self.layout_id = shard, layout_id
        for session, route in dropped.items():  # after the swap: no step slips into the new shard
            await self._send_to(route.origin, session, Error(session, "stale-plan", "this stage now holds other units"))

    def busy(self) -> bool:
        """Whether sessions are open here (their steps compete with anything else on the CPU)."""
        return bool(self.routes)

    async def run_on_worker(self, call: Callable[[], T]) -> T:
        """Run torch work on the process's one compute thread (compute.py: one OpenMP team runs
        twice as fast as two; caches are only touched there)."""
        return await on_compute(call)

    def add_routes(self, app: web.Application) -> None:
        """Mount the stage endpoint, a status page, and the idle-session sweeper."""
        app.router.add_get(STAGE_PATH, frame_endpoint(self.handle, on_close=self._on_inbound_closed))
        app.router.add_get("/status", self._status)
        app.cleanup_ctx.append(self._sweeper)

    async def _sweeper(self, _app: web.Application) -> AsyncIterator[None]:
        """Evict idle sessions periodically, for as long as the app runs."""
        task = asyncio.get_running_loop().create_task(self._sweep_forever())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            shard = self.shard
            if shard is None:
                continue
            # On the worker thread: the caches are only ever touched there.
            for session in await self.run_on_worker(shard.evict_idle):
                self.routes.pop(session, None)
                log.info("session %s evicted after %.0f s idle", session, shard.idle_s)
            # Routes whose session never stepped or lost its cache, and no Close came (its origin
            # or a stage before this one died): drop them, or they would fill the table.
            live: set[str] = set(await self.run_on_worker(partial(list, shard.sessions)))
            now = time.monotonic()
            for session, route in list(self.routes.items()):
                if session not in live and now - route.opened > SWEEP_INTERVAL_S:
                    self.routes.pop(session, None)

    def status(self) -> dict[str, Any]:
        """Units, sessions, batching and memory of this stage."""
        shard = self.shard
        batcher = self.batcher
        return {
            "start": shard.start if shard else None,
            "end": shard.end if shard else None,
            "sessions": len(self.routes),
            "waiting_steps": batcher.waiting,
            "passes": batcher.passes,
            "groups": batcher.groups,
            "mean_batch": round(batcher.steps / batcher.passes, 2) if batcher.passes else 0.0,
            "weights": shard.form if shard else None,
            "weight_bytes": shard.weight_bytes() if shard else 0,
            "rss_bytes": psutil.Process(os.getpid()).memory_info().rss,
            "pid": os.getpid(),
            "layout_id": self.layout_id,
            "prefix_cache": shard.prefixes.status() if shard else None,
        }

    async def _status(self, _request: web.Request) -> web.Response:
        return web.json_response(self.status())

    # --- sessions ending --------------------------------------------------------------------

    async def _on_returned(self, frame: Frame, _reply: Reply) -> None:
        """An error frame came back from the next stage: pass it on to the session's origin."""
        if isinstance(frame, Error) and frame.session in self.routes:
            await self._to_origin(frame.session, frame)

    async def _on_link_closed(self, url: str) -> None:
        """The next stage at `url` hung up: its sessions cannot continue; tell their origins."""
        broken = [session for session, route in self.routes.items() if route.next_url == url]
        for session in broken:
            await self._to_origin(session, Error(session, "link-broken", f"the stage at {url} closed the link"))
        for session in broken:
            await self._end(session, forward=False)  # the stage at `url` is gone: no Close to it

    async def _on_inbound_closed(self, reply: Reply) -> None:
        """The link sessions came over closed (the stage before, or the origin, is gone): those
        sessions end here now, and down the route, instead of at the idle sweep."""
        for session, route in list(self.routes.items()):
            if route.inbound is reply:
                await self._end(session)

    async def _end(self, session: str, forward: bool = True, blocks: tuple[bytes, ...] = ()) -> None:
        """Forget a session here (keeping the blocks its origin named) and tell the next stage
        to do the same."""
        await self._ended(session, *self._forget(session, blocks), forward)

    def _forget(self, session: str, blocks: tuple[bytes, ...]) -> Forgotten:
        """A session's end up to the first wait: out of the tables, and the close of its cache
        (keeping `blocks`) queued on the compute thread now, so that an `Open` handled after
        this one finds what it keeps (`_open_reusing` waits for those closes)."""
        route = self.routes.pop(session, None)
        self.batcher.drop(session)
        self._arrivals.pop(session, None)
        if self._closing or self.shard is None:  # shutting down: the worker goes with everything
            return route, None, blocks
        closing = submit_compute(partial(self.shard.close, session, blocks))
        if blocks:
            self._storing.add(closing)
            closing.add_done_callback(self._storing.discard)
        return route, closing, blocks

    async def _ended(
        self, session: str, route: SessionRoute | None, closing: Closing, blocks: tuple[bytes, ...], forward: bool
    ) -> None:
        if self._closing:
            return
        if forward and route is not None and route.next_url is not None:  # ahead of any later Open
            with contextlib.suppress(StageError):
                await self.links.send(route.next_url, Close(session, blocks))
        if closing is not None:
            await closing

    async def _to_origin(self, session: str, frame: Frame) -> None:
        route = self.routes.get(session)
        if route is not None:
            await self._send_to(route.origin, session, frame)

    async def _send_to(self, origin: str, session: str, frame: Frame) -> None:
        try:
            await self.links.send(origin, frame)
        except StageError as error:
            log.warning("cannot reach origin of session %s: %s", session, error)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the link's frames (kept until done, cancelled at close)."""
        task = asyncio.get_running_loop().create_task(work)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    # --- frames -----------------------------------------------------------------------------

    async def handle(self, frame: Frame, reply: Reply) -> None:
        """Handle one inbound frame; faults become error frames, never crashes."""
        try:
            await self._dispatch(frame, reply)
        except (ProtocolError, SessionError, StageError, ValueError) as error:
            code = error.code if isinstance(error, ProtocolError | StageError) else type(error).__name__
            session = getattr(frame, "session", "")
            log.info("session %s: %s", session, error)
            await reply(Error(session, code, str(error)))
        except Exception as error:  # a fault of ours (torch, a closed worker): one session, not the link
            log.exception("stage fault")
            with contextlib.suppress(Exception):
                await reply(Error(getattr(frame, "session", ""), "stage-fault", str(error)))

    async def _dispatch(self, frame: Frame, reply: Reply) -> None:
        match frame:
            case Open():
                last = frame.hop == len(frame.route) - 1
                matcher = await self._matcher(frame) if last else None  # before the checks: they hold after it
                if self.layout_id is not None and frame.layout_id != self.layout_id:
                    raise ProtocolError("stale-plan", f"this stage serves layout {self.layout_id or '(none yet)'}")
                if self.shard is None:
                    raise ProtocolError("not-serving", "this peer holds no units in the current plan")
                if self.admit is not None and (why := self.admit(frame.route, frame.hop, frame.origin)):
                    raise ProtocolError("stale-plan", why)  # a member with a stale view retries
                if frame.session not in self.routes and len(self.routes) >= self.max_sessions:
                    raise ProtocolError("busy", f"this stage holds {self.max_sessions} sessions")
                self.routes[frame.session] = SessionRoute(
                    next_url=None if last else frame.route[frame.hop + 1],
                    origin=frame.origin,
                    sampling=frame.sampling,
                    wire_dtype=frame.wire_dtype,
                    layout_id=frame.layout_id,
                    opened=time.monotonic(),
                    inbound=reply,
                    matcher=matcher,
                )
                if frame.prefix is not None:
                    await self._open_reusing(frame, last)
                elif not last:
                    await self.links.send(frame.route[frame.hop + 1], replace(frame, hop=frame.hop + 1))
            case InputIds():
                shard = self._shard()
                if not shard.has_embedding:
                    raise ProtocolError("wrong-stage", "token ids go to the stage holding the embedding")
                if max(frame.token_ids) >= shard.config.vocab_size:
                    raise ProtocolError("bad-token", f"token id beyond the vocabulary ({shard.config.vocab_size})")
                self._submit(frame.session, frame.position, torch.tensor(frame.token_ids, dtype=torch.long), ())
            case Hidden():
                shard = self._shard()
                if shard.has_embedding:
                    raise ProtocolError("wrong-stage", "this stage takes token ids, not hidden states")
                if frame.shape[1] != shard.config.hidden_size:
                    raise ProtocolError(
                        "bad-shape",
                        f"hidden size {frame.shape[1]}, model has {shard.config.hidden_size}",
                    )
                self._submit(frame.session, frame.position, hidden_tensor(frame), frame.trace)
            case Close():
                # Its caches go on the worker after the pass in flight; the link's other
                # frames (other sessions' steps) must not wait for that.
                if frame.session in self.routes:
                    self._spawn(self._ended(frame.session, *self._forget(frame.session, frame.blocks), True))
            case Sampled() | Error() | Reused():
                raise ProtocolError("wrong-stage", "sampled and error frames go to an origin")

    async def _matcher(self, frame: Open) -> Matcher | None:
        """The last stage's matcher for a constrained session, off the event loop (a grammar
        compiles in milliseconds; a large one in more)."""
        constraint = frame.sampling.constraint
        if constraint is None:
            return None
        if self.grammars is None:
            raise ProtocolError("bad-grammar", "this stage cannot constrain answers (no tokenizer)")
        try:
            return await asyncio.to_thread(self.grammars.matcher, constraint.grammar, constraint.answered)
        except GrammarError as error:
            raise ProtocolError("bad-grammar", str(error)) from None

    async def _open_reusing(self, frame: Open, last: bool) -> None:
        """Take the cached blocks of the prompt this stage holds and queue their copy into the
        session's cache on the compute thread (ahead of any step of the session, which comes
        after this answer), then pass on at once the keys every stage so far holds: down the
        route, or to the origin from the last stage. Nothing here waits for a pass."""
        if self._storing:  # sessions closed before this Open: their blocks first
            await asyncio.wait(set(self._storing))
        session, keys, shard = frame.session, frame.prefix or (), self._shard()
        blocks = shard.prefixes.take(keys)
        self._spawn(self._loaded(frame, submit_compute(partial(shard.open_reusing, session, blocks))))
        if last:
            await self._send_to(frame.origin, session, Reused(session, len(blocks)))
        else:
            await self.links.send(
                frame.route[frame.hop + 1], replace(frame, hop=frame.hop + 1, prefix=keys[: len(blocks)])
            )

    async def _loaded(self, frame: Open, loading: asyncio.Future[int]) -> None:
        """A copy that failed (no free slot) reaches the origin as the session's error."""
        try:
            await loading
        except SessionError as error:
            await self._send_to(frame.origin, frame.session, Error(frame.session, type(error).__name__, str(error)))

    def _shard(self) -> Shard:
        if self.shard is None:
            raise ProtocolError("not-serving", "this peer holds no units in the current plan")
        return self.shard

    def _submit(self, session: str, position: int, inputs: torch.Tensor, trace: wire.Trace) -> None:
        route = self.routes.get(session)
        if route is None:
            raise SessionError(f"unknown session {session} (no open frame)")
        # The prompt's own log-probabilities asked for: the head over every row of its steps.
        scoring = route.next_url is None and position < len(route.sampling.scored) - 1
        self.batcher.submit(Step(session, position, inputs, every_row=scoring))
        self._arrivals[session] = Arrival.now(trace)

    # --- passes -----------------------------------------------------------------------------

    async def _compute(self, batch: Sequence[Step]) -> list[Outbound | None]:
        shard = self._shard()
        routes = [self.routes.get(step.session) for step in batch]
        arrivals = [self._arrivals.pop(step.session, None) for step in batch]
        return await self.run_on_worker(partial(run_pass, shard, batch, routes, arrivals))

    async def _deliver(self, _batch: Sequence[Step], outputs: list[Outbound | None]) -> None:
        # Sends run beside the next pass: a slow link delays its own sessions, not the stage.
        for output in outputs:
            if output is not None and output.session in self.routes:
                self._spawn(self._send(output))

    async def _send(self, output: Outbound) -> None:
        try:
            await self.links.send(output.url, output.data)
        except StageError as error:
            if not output.to_origin:
                await self._to_origin(output.session, Error(output.session, "link-broken", str(error)))
            else:
                log.warning("cannot reach origin of session %s: %s", output.session, error)

    async def close(self) -> None:
        """Stop batching, close links and stop the worker."""
        self._closing = True
        await self.batcher.close()
        for task in list(self._sending):
            task.cancel()
        await self.links.close()
        await self.run_on_worker(lambda: None)  # the thread is shared: wait for this stage's work
