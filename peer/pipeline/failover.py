"""Generation that survives a stage dying: wait for the new plan, replay, continue the stream.

The origin keeps the prompt and every token it has yielded. When the route breaks (a link
closes, a stage answers with an error, a peer is declared dead), it waits, bounded, for a plan
whose stages all serve it, opens a new session there, and sends prompt + generated tokens as
one prefill. Sampling is keyed by (seed, position), so the tokens that follow are the ones the
undisturbed run would have produced: none lost, none repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from ..errors import PeerError, StageError
from ..wire import Sampled, SamplingParams, WireDtype
from .layouts import LayoutSource, ReadyLayout
from .origin import Origin
from .timing import StepTiming

log = logging.getLogger(__name__)

# Faults of the request itself: no other route can do better.
FATAL_CODES = frozenset({"ContextError", "bad-token", "bad-frame", "bad-shape", "too-large", "bad-grammar"})
# A stage that holds all the sessions it was sized for (other origins fill it too): back-pressure,
# not a fault. The request waits its turn, then opens again on the same route.
BACK_PRESSURE_CODES = frozenset({"busy"})
RETRY_PAUSE_S = 0.25
BUSY_PAUSE_MAX_S = 2.0
BUSY_WAIT_S = 300.0


class NoRouteError(PeerError):
    """No plan whose stages all serve it appeared in time (the cluster cannot hold the model)."""


@dataclass(frozen=True)
class Recovery:
    """One fail-over: at which generated token, how long the stream stood still (from the
    failure's notice to the next token; `route_wait_s` of it waiting for a ready plan, the rest
    replaying), and why."""

    at_token: int
    seconds: float
    route_wait_s: float
    reason: str
    old_layout: str
    new_layout: str


async def generate_with_failover(
    origin: Origin,
    layouts: LayoutSource,
    prompt_ids: Sequence[int],
    sampling: SamplingParams,
    max_tokens: int,
    stop_ids: Sequence[int] = (),
    wire_dtype: WireDtype = "float32",
    recovery_timeout_s: float = 60.0,
    recoveries: list[Recovery] | None = None,
    timings: list[StepTiming] | None = None,
    reused: list[int] | None = None,
    reuse: bool = True,
    logprobs: list[Sampled] | None = None,
    prompt_logprobs: list[Sampled] | None = None,
) -> AsyncIterator[int]:
    """Stream token ids like `Origin.generate`, replaying on another route after a failure
    (fail-overs go to `recoveries`, each step's timing to `timings`, each session's reused prompt
    tokens to `reused`, each token's log-probabilities to `logprobs`, and the prompt's own to
    `prompt_logprobs` (when the sampling asks: then `max_tokens` may be 0), when given; `reuse`
    False: no prefix caching for this request). A constrained answer's replay carries the tokens
    so far, which the new last stage's matcher consumes before it masks the next one."""
    produced: list[int] = []
    failed_at: float | None = None
    reason, old_layout = "", ""
    busy_since: float | None = None
    busy_pause = RETRY_PAUSE_S
    scoring_only = max_tokens == 0 and sampling.prompt_logprobs >= 0  # one pass over the prompt
    while len(produced) < max_tokens or scoring_only:
        waited = time.monotonic() - failed_at if failed_at is not None else 0.0
        route = await layouts(max(recovery_timeout_s - waited, 0.0))
        routed_at = time.monotonic()
        try:
            constraint = sampling.constraint
            tokens = origin.generate(
                route.urls,
                [*prompt_ids, *produced],
                replace(sampling, constraint=replace(constraint, answered=tuple(produced))) if constraint else sampling,
                max_tokens - len(produced),
                stop_ids,
                layout_id=route.layout_id,
                wire_dtype=wire_dtype,
                timings=timings,
                reused=reused,
                reuse=reuse,
                logprobs=logprobs,
                prompt_logprobs=prompt_logprobs,
            )
            async with contextlib.aclosing(tokens):  # the session is closed at once, even when we stop early
                async for token in tokens:
                    if failed_at is not None:
                        recovery = Recovery(
                            len(produced),
                            time.monotonic() - failed_at,
                            routed_at - failed_at,
                            reason,
                            old_layout,
                            route.layout_id,
                        )
                        log.info(
                            "fail-over done: resumed at token %d on layout %s after %.2f s (%s)",
                            recovery.at_token,
                            route.layout_id,
                            recovery.seconds,
                            reason,
                        )
                        if recoveries is not None:
                            recoveries.append(recovery)
                        failed_at = None
                    produced.append(token)
                    yield token
            return  # a stop token, or max_tokens reached
        except StageError as error:
            if error.code in FATAL_CODES:
                raise
            now = time.monotonic()
            if error.code in BACK_PRESSURE_CODES:
                busy_since = now if busy_since is None else busy_since
                if now - busy_since > BUSY_WAIT_S:
                    raise NoRouteError(f"the stages stayed full for {BUSY_WAIT_S:.0f} s") from error
                await asyncio.sleep(busy_pause)
                busy_pause = min(busy_pause * 2, BUSY_PAUSE_MAX_S)
                continue
            busy_since, busy_pause = None, RETRY_PAUSE_S
            if failed_at is None:
                failed_at, reason, old_layout = now, str(error), route.layout_id
                log.warning(
                    "route of layout %s broke at token %d: %s; failing over", route.layout_id, len(produced), error
                )
            if now - failed_at > recovery_timeout_s:
                raise NoRouteError(f"no working route within {recovery_timeout_s:.0f} s after: {reason}") from error
            await asyncio.sleep(RETRY_PAUSE_S)


async def wait_for(condition: Callable[[], ReadyLayout | str], timeout_s: float, poll_s: float = 0.1) -> ReadyLayout:
    """Poll `condition` (a ReadyLayout when ready, else the reason it is not) until ready or timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = condition()
        if isinstance(state, ReadyLayout):
            return state
        if time.monotonic() >= deadline:
            raise NoRouteError(state)
        await asyncio.sleep(poll_s)
