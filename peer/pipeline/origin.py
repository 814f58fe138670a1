"""The origin: opens a session along a route, feeds tokens to stage 0, yields the sampled ones.

The origin owns the stop decision (end-of-sequence ids, max tokens; stop strings are checked
by the caller that holds the tokenizer), so stages stay simple. A prompt goes in chunks of at
most `PREFILL_CHUNK_TOKENS` (fewer when the model's hidden states would not fit a frame), each
acknowledged by the token sampled after it, so a long prefill never fills a frame and the decode
steps of other sessions run between its chunks (Sarathi-Serve's chunked prefill). Tokens arrive on the origin's own
endpoint (the last stage connects to it); error frames arrive either there or back on the link
to stage 0. Every wait is bounded.

With prefix reuse on, the `Open` carries the keys of the prompt's whole blocks (all but its last
token, which must be fed); the last stage answers how many blocks every stage holds
(`Reused`), and the prompt is fed from there. The `Close` names the blocks of every token the
route computed (prompt and answer, acknowledged steps only), so the next turn of the same
conversation, or another request with the same system prompt, starts from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import replace

from aiohttp import web

from .. import wire
from ..errors import StageError
from ..wire import (
    MAX_PREFIX_BLOCKS,
    PREFIX_BLOCK_TOKENS,
    Close,
    Error,
    Frame,
    InputIds,
    Open,
    Reused,
    Sampled,
    SamplingParams,
    WireDtype,
    block_hashes,
    prefix_seed,
)
from .links import STAGE_PATH, Links, Reply, Sign, frame_endpoint
from .timing import StepTiming

STEP_TIMEOUT_S = 120.0  # a decode step's bound; a prompt chunk's grows with its tokens
TIMEOUT_TOKENS_PER_STEP = 16
PREFILL_CHUNK_TOKENS = 256
ATTENTION_TOKENS = 1024  # positions after which a chunk's attention outweighs its projections here
MIN_CHUNK_TOKENS = 16
FRAME_HEADROOM_BYTES = 4096  # a Hidden frame's fields beside its data


def prefill_chunk(hidden_size: int | None, wire_dtype: WireDtype) -> int:
    """Prompt tokens per chunk: PREFILL_CHUNK_TOKENS, fewer when their hidden states would
    exceed the frame limit."""
    if not hidden_size:
        return PREFILL_CHUNK_TOKENS
    fits = (wire.MAX_FRAME_BYTES - FRAME_HEADROOM_BYTES) // (hidden_size * wire.WIRE_ITEMSIZE[wire_dtype])
    return max(1, min(PREFILL_CHUNK_TOKENS, fits))


def chunk_at(limit: int, position: int) -> int:
    """Tokens of the prompt chunk that starts at `position`: `limit` while the context is short,
    then fewer in proportion (each token of a chunk attends to every position before it), so a
    chunk deep into a long prompt holds the sessions decoding beside it about as long as one at
    its start does."""
    return min(limit, max(MIN_CHUNK_TOKENS, limit * ATTENTION_TOKENS // (position + ATTENTION_TOKENS)))


def step_timeout(timeout_s: float, tokens: int) -> float:
    """The wait for a step's token: `timeout_s` per TIMEOUT_TOKENS_PER_STEP tokens fed. A slow
    device's 256-token chunk legitimately outlasts a decode step's bound (the 1B shape's int8
    chunk took over 120 s on 2 cores); a dead stage is caught sooner by its link closing."""
    return timeout_s * max(1, -(-tokens // TIMEOUT_TOKENS_PER_STEP))


class Origin:
    """Generation sessions started from this process."""

    def __init__(
        self,
        url: str = "",
        prefix: str = "",
        hidden_size: int | None = None,
        sign: Sign | None = None,
        reuse_prefixes: bool = True,
    ) -> None:
        # Where the last stage reaches this origin (base URL + prefix); set once the server listens.
        self.url = url
        self.prefix = prefix  # "/origin" when the origin shares an app with a stage server
        self.hidden_size = hidden_size  # sizes prefill chunks to the frame limit
        self.reuse_prefixes = reuse_prefixes  # ask the stages for cached prompt blocks
        self.links = Links(on_frame=self._receive, on_close=self._link_closed, sign=sign)
        self._queues: dict[str, asyncio.Queue[Sampled | Error | Reused]] = {}
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
        if isinstance(frame, Sampled | Error | Reused):
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
        reused: list[int] | None = None,
        reuse: bool = True,
        logprobs: list[Sampled] | None = None,
        prompt_logprobs: list[Sampled] | None = None,
    ) -> AsyncGenerator[int, None]:
        """Stream generated token ids (stop ids are not yielded); each step's timing goes to
        `timings`, the prompt tokens taken from the stages' prefix caches to `reused`, and each
        yielded token's log-probabilities (when the sampling asks for them) to `logprobs`, when
        given; `reuse` False: neither take nor keep cached blocks. A constrained answer's
        `answered` tokens end `prompt_ids` (a replay's). When the sampling asks for the prompt's
        own log-probabilities, `prompt_logprobs` gets one entry per prompt token (the first has
        none), the whole prompt is computed (no cached blocks), and `max_tokens` may be 0."""
        scoring = sampling.prompt_logprobs >= 0
        if max_tokens <= 0 and not scoring:
            return
        reuse = reuse and self.reuse_prefixes and not scoring
        if scoring:
            sampling = replace(sampling, scored=tuple(prompt_ids))
            if prompt_logprobs is not None:  # refilled from the start by a fail-over's replay
                prompt_logprobs[:] = [Sampled("", 0, prompt_ids[0])]
        if (constraint := sampling.constraint) is not None:
            sampling = replace(
                sampling, constraint=replace(constraint, start=len(prompt_ids) - len(constraint.answered))
            )
        session = secrets.token_hex(8)
        queue: asyncio.Queue[Sampled | Error | Reused] = asyncio.Queue()
        self._queues[session] = queue
        self._routes[session] = tuple(route)
        stage0 = route[0]
        seed = prefix_seed(layout_id, wire_dtype)
        asked = block_hashes(seed, prompt_ids[: len(prompt_ids) - 1])[:MAX_PREFIX_BLOCKS] if reuse else []
        history, computed = list(prompt_ids), 0  # tokens fed, and how many of them every stage holds

        async def answer(bound: float) -> Sampled | Reused:
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel (client gone)
                async with asyncio.timeout(bound):
                    reply = await queue.get()
            except TimeoutError:
                raise StageError(f"no answer within {bound:.1f} s (session {session})", "timeout") from None
            if isinstance(reply, Error):
                raise StageError(f"{reply.code}: {reply.message}", reply.code)
            return reply

        async def step(position: int, feed: Sequence[int]) -> Sampled:
            nonlocal computed
            sent = time.time()
            await self.links.send(stage0, InputIds(session, position, tuple(feed)))
            reply = await answer(step_timeout(timeout_s, len(feed)))
            if not isinstance(reply, Sampled):
                raise StageError(f"a {type(reply).__name__} frame where a token was due", "out-of-order")
            expected = position + len(feed)
            if reply.position != expected:
                raise StageError(f"token for position {reply.position}, expected {expected}", "out-of-order")
            computed = expected
            if prompt_logprobs is not None:
                for at, (logprob, top) in enumerate(reply.prompt, position + 1):
                    prompt_logprobs.append(Sampled(session, at, prompt_ids[at], (), logprob, top))
            if timings is not None:
                prefill = position < len(prompt_ids)
                timings.append(StepTiming(tuple(route), sent, time.time(), prefill, reply.trace))
            return reply

        try:
            keys = tuple(asked) if asked else None
            await self.links.send(
                stage0, Open(session, tuple(route), 0, self.url, layout_id, sampling, wire_dtype, keys)
            )
            position = 0
            if keys is not None:
                held = await answer(timeout_s)
                if not isinstance(held, Reused) or held.blocks > len(keys):
                    raise StageError(f"a {type(held).__name__} frame where the reused blocks were due", "out-of-order")
                position = computed = held.blocks * PREFIX_BLOCK_TOKENS
            if reused is not None:
                reused.append(position)
            chunk = prefill_chunk(self.hidden_size, wire_dtype)
            feed = list(prompt_ids[position:])
            while len(feed) > (size := chunk_at(chunk, position)):  # leading chunks: their tokens are acks
                await step(position, feed[:size])
                position, feed = position + size, feed[size:]
            if max_tokens <= 0:  # the prompt scored, no answer
                await step(position, feed)
                return
            for _ in range(max_tokens):
                sampled = await step(position, feed)
                token = sampled.token_id
                position += len(feed)
                if token in stop_ids:
                    return
                if logprobs is not None and sampled.logprob is not None:
                    logprobs.append(sampled)
                yield token
                feed = [token]
                history.append(token)
        finally:
            del self._queues[session]
            del self._routes[session]
            blocks = block_hashes(seed, history[:computed])[:MAX_PREFIX_BLOCKS] if reuse else []
            with contextlib.suppress(StageError):  # a stage that is gone took its sessions along
                await self.links.send(stage0, Close(session, tuple(blocks)))

    async def close(self) -> None:
        """Close the links."""
        await self.links.close()
