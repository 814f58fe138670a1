"""The origin: opens a session along a route, feeds tokens to stage 0, yields the sampled ones.

The origin owns the stop decision (end-of-sequence ids, max tokens; stop strings are checked
by the caller that holds the tokenizer), so stages stay simple. A prompt goes in chunks of at
most `PREFILL_CHUNK_TOKENS` (fewer when the model's hidden states would not fit a frame), each
acknowledged by the token sampled after it, so a long prefill never fills a frame and the decode
steps of other sessions run between its chunks (Sarathi-Serve's chunked prefill). Tokens arrive on the origin's own
endpoint (the last stage connects to it); error frames arrive either there or back on the link
to stage 0. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncGenerator, Sequence

from aiohttp import web

from .. import wire
from ..errors import StageError
from ..wire import Close, Error, Frame, InputIds, Open, Sampled, SamplingParams, WireDtype
from .links import STAGE_PATH, Links, Reply, Sign, frame_endpoint
from .timing import StepTiming

STEP_TIMEOUT_S = 120.0  # a decode step's bound; a prompt chunk's grows with its tokens
TIMEOUT_TOKENS_PER_STEP = 16
PREFILL_CHUNK_TOKENS = 256
FRAME_HEADROOM_BYTES = 4096  # a Hidden frame's fields beside its data


def prefill_chunk(hidden_size: int | None, wire_dtype: WireDtype) -> int:
    """Prompt tokens per chunk: PREFILL_CHUNK_TOKENS, fewer when their hidden states would
    exceed the frame limit."""
    if not hidden_size:
        return PREFILL_CHUNK_TOKENS
    fits = (wire.MAX_FRAME_BYTES - FRAME_HEADROOM_BYTES) // (hidden_size * wire.WIRE_ITEMSIZE[wire_dtype])
    return max(1, min(PREFILL_CHUNK_TOKENS, fits))


def step_timeout(timeout_s: float, tokens: int) -> float:
    """The wait for a step's token: `timeout_s` per TIMEOUT_TOKENS_PER_STEP tokens fed. A slow
    device's 256-token chunk legitimately outlasts a decode step's bound (the 1B shape's int8
    chunk took over 120 s on 2 cores); a dead stage is caught sooner by its link closing."""
    return timeout_s * max(1, -(-tokens // TIMEOUT_TOKENS_PER_STEP))


class Origin:
    """Generation sessions started from this process."""

    def __init__(
        self, url: str = "", prefix: str = "", hidden_size: int | None = None, sign: Sign | None = None
    ) -> None:
        # Where the last stage reaches this origin (base URL + prefix); set once the server listens.
        self.url = url
        self.prefix = prefix  # "/origin" when the origin shares an app with a stage server
        self.hidden_size = hidden_size  # sizes prefill chunks to the frame limit
        self.links = Links(on_frame=self._receive, on_close=self._link_closed, sign=sign)
        self._queues: dict[str, asyncio.Queue[Sampled | Error]] = {}
        self._routes: dict[str, tuple[str, ...]] = {}

    def add_routes(self, app: web.Application) -> None:
        """Mount the endpoint the last stage sends tokens to."""
        app.router.add_get(self.prefix + STAGE_PATH, frame_endpoint(self._receive))

    def abort_route(self, url: str, code: str, message: str) -> None:
        """Fail every session whose route passes `url` (its peer was declared dead)."""
        for session, route in self._routes.items():
            if url in route:
                self._queues[session].put_nowait(Error(session, code, message))

    async def _link_closed(self, url: str) -> None:
        self.abort_route(url, "link-broken", f"the stage at {url} closed the link")

    async def _receive(self, frame: Frame, _reply: Reply) -> None:
        if isinstance(frame, Sampled | Error):
            queue = self._queues.get(frame.session)
            if queue is not None:
                queue.put_nowait(frame)

    async def generate(
        self,
        route: Sequence[str],
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        max_tokens: int,
        stop_ids: Sequence[int] = (),
        layout_id: str = "",
        wire_dtype: WireDtype = "float32",
        timeout_s: float = STEP_TIMEOUT_S,
        timings: list[StepTiming] | None = None,
    ) -> AsyncGenerator[int, None]:
        """Stream generated token ids (stop ids are not yielded); each step's timing goes to
        `timings` when given."""
        session = secrets.token_hex(8)
        queue: asyncio.Queue[Sampled | Error] = asyncio.Queue()
        self._queues[session] = queue
        self._routes[session] = tuple(route)
        stage0 = route[0]

        async def step(position: int, feed: Sequence[int]) -> int:
            sent = time.time()
            await self.links.send(stage0, InputIds(session, position, tuple(feed)))
            bound = step_timeout(timeout_s, len(feed))
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel (client gone)
                async with asyncio.timeout(bound):
                    reply = await queue.get()
            except TimeoutError:
                raise StageError(f"no token within {bound:.0f}s (session {session})", "timeout") from None
            if isinstance(reply, Error):
                raise StageError(f"{reply.code}: {reply.message}", reply.code)
            expected = position + len(feed)
            if reply.position != expected:
                raise StageError(f"token for position {reply.position}, expected {expected}", "out-of-order")
            if timings is not None:
                prefill = position < len(prompt_ids)
                timings.append(StepTiming(tuple(route), sent, time.time(), prefill, reply.trace))
            return reply.token_id

        try:
            await self.links.send(stage0, Open(session, tuple(route), 0, self.url, layout_id, sampling, wire_dtype))
            chunk = prefill_chunk(self.hidden_size, wire_dtype)
            position, feed = 0, list(prompt_ids)
            while len(feed) > chunk:  # the prompt's leading chunks: their sampled tokens are acks
                await step(position, feed[:chunk])
                position, feed = position + chunk, feed[chunk:]
            for _ in range(max_tokens):
                token = await step(position, feed)
                position += len(feed)
                if token in stop_ids:
                    return
                yield token
                feed = [token]
        finally:
            del self._queues[session]
            del self._routes[session]
            with contextlib.suppress(StageError):  # a stage that is gone took its sessions along
                await self.links.send(stage0, Close(session))

    async def close(self) -> None:
        """Close the links."""
        await self.links.close()
