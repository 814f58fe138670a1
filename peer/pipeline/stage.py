"""A stage server: receives frames, runs its shard off the loop, forwards the result.

Theory of operation. A session is opened by an `Open` frame that carries the route (every
stage's URL), this stage's hop index and the origin's URL; each stage remembers where the
session goes next (its `SessionRoute`) and forwards the `Open` down the route. Stage 0 then
receives `InputIds`, every other stage `Hidden`; each runs its units on the single worker thread
(torch never runs on the event loop, so heartbeats and other links stay on time) and sends
`Hidden` on, or, on the last stage, samples and sends `Sampled` to the origin. Frames of one
link are handled in order, and a session has at most one step in flight (the origin waits for
each token), so per-session order holds. Any fault in a frame is answered with an `Error` frame
naming the session; the stage keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import psutil
import torch
from aiohttp import web

from ..errors import ProtocolError, StageError
from ..model.sampling import sample
from ..model.shard import SessionError, Shard
from ..wire import Close, Error, Frame, Hidden, InputIds, Open, Sampled, SamplingParams, WireDtype
from .hidden import hidden_frame, hidden_tensor
from .links import STAGE_PATH, Links, Reply, frame_endpoint

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 30.0
T = TypeVar("T")


@dataclass(frozen=True)
class SessionRoute:
    """Where a session's output goes from this stage."""

    next_url: str | None  # None on the last stage
    origin: str
    sampling: SamplingParams
    wire_dtype: WireDtype
    layout_id: str
    opened: float = 0.0  # time.monotonic() at open


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
    ) -> None:
        self.shard = shard
        self.layout_id = layout_id
        self.links = links or Links(on_frame=self._on_returned, on_close=self._on_link_closed)
        self.routes: dict[str, SessionRoute] = {}
        self.max_sessions = max_sessions
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard")

    def serve(self, shard: Shard | None, layout_id: str) -> None:
        """Serve another shard for `layout_id`; sessions of the old shard are dropped (their
        caches hold other layers, so continuing them would compute garbage)."""
        if shard is not self.shard:
            self.routes.clear()
        self.shard, self.layout_id = shard, layout_id

    async def run_on_worker(self, call: Callable[[], T]) -> T:
        """Run torch work on the stage's single worker thread (caches are only touched there)."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, call)

    def add_routes(self, app: web.Application) -> None:
        """Mount the stage endpoint, a status page, and the idle-session sweeper."""
        app.router.add_get(STAGE_PATH, frame_endpoint(self.handle))
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
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            shard = self.shard
            if shard is None:
                continue
            # On the worker thread: the caches are only ever touched there.
            for session in await loop.run_in_executor(self.worker, shard.evict_idle):
                self.routes.pop(session, None)
                log.info("session %s evicted after %.0f s idle", session, shard.idle_s)
            # Routes whose session never stepped or lost its cache, and no Close came (its origin
            # or a stage before this one died): drop them, or they would fill the table.
            live = set(await loop.run_in_executor(self.worker, list, shard.sessions))
            now = time.monotonic()
            for session, route in list(self.routes.items()):
                if session not in live and now - route.opened > SWEEP_INTERVAL_S:
                    self.routes.pop(session, None)

    def status(self) -> dict[str, Any]:
        """Units, sessions and memory of this stage."""
        shard = self.shard
        return {
            "start": shard.start if shard else None,
            "end": shard.end if shard else None,
            "sessions": len(shard.sessions) if shard else 0,
            "weight_bytes": shard.weight_bytes() if shard else 0,
            "rss_bytes": psutil.Process(os.getpid()).memory_info().rss,
            "pid": os.getpid(),
            "layout_id": self.layout_id,
        }

    async def _status(self, _request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _on_returned(self, frame: Frame, _reply: Reply) -> None:
        """An error frame came back from the next stage: pass it on to the session's origin."""
        if isinstance(frame, Error) and frame.session in self.routes:
            await self._to_origin(frame.session, frame)

    async def _on_link_closed(self, url: str) -> None:
        """The next stage at `url` hung up: its sessions cannot continue; tell their origins."""
        for session, route in list(self.routes.items()):
            if route.next_url == url:
                await self._to_origin(session, Error(session, "link-broken", f"the stage at {url} closed the link"))
                self.routes.pop(session, None)

    async def _to_origin(self, session: str, frame: Frame) -> None:
        route = self.routes.get(session)
        if route is None:
            return
        try:
            await self.links.send(route.origin, frame)
        except StageError as error:
            log.warning("cannot reach origin of session %s: %s", session, error)

    async def handle(self, frame: Frame, reply: Reply) -> None:
        """Handle one inbound frame; faults become error frames, never crashes."""
        try:
            await self._dispatch(frame)
        except (ProtocolError, SessionError, StageError, ValueError) as error:
            code = error.code if isinstance(error, ProtocolError | StageError) else type(error).__name__
            session = getattr(frame, "session", "")
            log.info("session %s: %s", session, error)
            await reply(Error(session, code, str(error)))
        except Exception as error:  # a fault of ours (torch, a closed worker): one session, not the link
            log.exception("stage fault")
            with contextlib.suppress(Exception):
                await reply(Error(getattr(frame, "session", ""), "stage-fault", str(error)))

    async def _dispatch(self, frame: Frame) -> None:
        match frame:
            case Open():
                if self.layout_id is not None and frame.layout_id != self.layout_id:
                    raise ProtocolError("stale-plan", f"this stage serves layout {self.layout_id or '(none yet)'}")
                if self.shard is None:
                    raise ProtocolError("not-serving", "this peer holds no units in the current plan")
                if frame.session not in self.routes and len(self.routes) >= self.max_sessions:
                    raise ProtocolError("busy", f"this stage holds {self.max_sessions} sessions")
                last = frame.hop == len(frame.route) - 1
                self.routes[frame.session] = SessionRoute(
                    next_url=None if last else frame.route[frame.hop + 1],
                    origin=frame.origin,
                    sampling=frame.sampling,
                    wire_dtype=frame.wire_dtype,
                    layout_id=frame.layout_id,
                    opened=time.monotonic(),
                )
                if not last:
                    await self.links.send(
                        frame.route[frame.hop + 1],
                        Open(
                            frame.session,
                            frame.route,
                            frame.hop + 1,
                            frame.origin,
                            frame.layout_id,
                            frame.sampling,
                            frame.wire_dtype,
                        ),
                    )
            case InputIds():
                shard = self._shard()
                if not shard.has_embedding:
                    raise ProtocolError("wrong-stage", "token ids go to the stage holding the embedding")
                if max(frame.token_ids) >= shard.config.vocab_size:
                    raise ProtocolError("bad-token", f"token id beyond the vocabulary ({shard.config.vocab_size})")
                await self._step(frame.session, frame.position, torch.tensor(frame.token_ids, dtype=torch.long))
            case Hidden():
                shard = self._shard()
                if shard.has_embedding:
                    raise ProtocolError("wrong-stage", "this stage takes token ids, not hidden states")
                if frame.shape[1] != shard.config.hidden_size:
                    raise ProtocolError(
                        "bad-shape",
                        f"hidden size {frame.shape[1]}, model has {shard.config.hidden_size}",
                    )
                await self._step(frame.session, frame.position, hidden_tensor(frame))
            case Close():
                route = self.routes.pop(frame.session, None)
                if self.shard is not None:  # on the worker: the caches are only touched there
                    await self.run_on_worker(partial(self.shard.close, frame.session))
                if route is not None and route.next_url is not None:
                    await self.links.send(route.next_url, frame)
            case Sampled() | Error():
                raise ProtocolError("wrong-stage", "sampled and error frames go to an origin")

    def _shard(self) -> Shard:
        if self.shard is None:
            raise ProtocolError("not-serving", "this peer holds no units in the current plan")
        return self.shard

    async def _step(self, session: str, position: int, inputs: torch.Tensor) -> None:
        route = self.routes.get(session)
        if route is None:
            raise SessionError(f"unknown session {session} (no open frame)")
        shard = self._shard()
        loop = asyncio.get_running_loop()
        output = await loop.run_in_executor(self.worker, shard.run, session, position, inputs)
        following = position + int(inputs.shape[0])
        if route.next_url is None:
            token = await loop.run_in_executor(self.worker, sample, output, route.sampling, following)
            await self._to_origin(session, Sampled(session, following, token))
        else:
            await self.links.send(route.next_url, hidden_frame(session, position, output, route.wire_dtype))

    async def close(self) -> None:
        """Close links and stop the worker."""
        await self.links.close()
        self.worker.shutdown(wait=True)
