"""Where a stage's sessions go (`SessionRoute`) and what a pass's results become: per step, the
frame that goes on (sampled on the last stage, hidden states copied to the host and encoded on
any other), made on the worker thread."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import cast

import torch

from .. import wire
from ..model.grammar import GrammarError, Matcher
from ..model.sampling import pick, score_rows
from ..model.shard import SessionError, Shard, Step
from ..wire import Error, Sampled, SamplingParams, Scored, WireDtype, encode
from .hidden import hidden_frame
from .links import Reply
from .timing import Arrival

Stamp = Callable[[], wire.Trace]  # a step's trace with this stage's entry, its hold ending now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionRoute:
    """Where a session's output goes from this stage, and the link it came over."""

    next_url: str | None  # None on the last stage
    origin: str
    sampling: SamplingParams
    wire_dtype: WireDtype
    layout_id: str
    opened: float = 0.0  # time.monotonic() at open
    inbound: Reply | None = None  # the link the session came over: when it closes, so does the session
    matcher: Matcher | None = None  # last stage, constrained answer: where it stands in its grammar


@dataclass(frozen=True)
class Outbound:
    """One step's result, encoded on the worker: where it goes and the frame's bytes."""

    session: str
    url: str
    data: bytes
    to_origin: bool


def run_pass(
    shard: Shard, batch: Sequence[Step], routes: Sequence[SessionRoute | None], arrivals: Sequence[Arrival | None]
) -> list[Outbound | None]:
    """On the worker: one pass over the batch, then per step the frame that goes on, already
    sampled (last stage) or copied to the host and encoded (any other), with the step's trace."""
    started = time.monotonic()
    try:
        results: Sequence[torch.Tensor | BaseException] = shard.run_batch(batch)
    except Exception as error:  # a fault of ours: these sessions fail, the stage goes on
        log.exception("stage fault in a pass of %d steps", len(batch))
        results = [error] * len(batch)
    ended = time.monotonic()
    outputs: list[Outbound | None] = []
    for step, route, result, arrival in zip(batch, routes, results, arrivals, strict=True):
        if route is None:  # closed while it waited
            outputs.append(None)
            continue
        try:
            stamp = partial(arrival.stamp, started, ended) if arrival is not None else tuple
            outputs.append(_outbound(step, route, result, stamp))
        except Exception as error:  # sampling or encoding failed: this session's fault report
            log.exception("stage fault after the pass, session %s", step.session)
            code = "bad-grammar" if isinstance(error, GrammarError) else "stage-fault"  # a replay would fail alike
            report = encode(Error(step.session, code, str(error)))
            outputs.append(Outbound(step.session, route.origin, report, True))
    return outputs


def _outbound(step: Step, route: SessionRoute, result: torch.Tensor | BaseException, stamp: Stamp) -> Outbound:
    """The frame one step's result becomes: an error, the sampled token, or hidden states (with
    the step's trace, stamped once sampling or the copy to the host is done)."""
    session = step.session
    if isinstance(result, BaseException):
        code = type(result).__name__ if isinstance(result, SessionError) else "stage-fault"
        return Outbound(session, route.origin, encode(Error(session, code, str(result))), True)
    if route.next_url is None:
        following = step.position + int(step.inputs.shape[0])
        constraint = route.sampling.constraint
        # A prompt's leading chunks are answered with tokens the origin drops: outside the grammar.
        answering = constraint is not None and following >= constraint.start + len(constraint.answered)
        logits, prompt = result, cast(tuple[Scored, ...], ())
        if step.every_row:  # the prompt's own log-probabilities: row r predicts position + r + 1
            scored, start = route.sampling.scored, step.position + 1
            tokens = scored[start : start + int(result.shape[0])]
            prompt, logits = score_rows(result, tokens, route.sampling.prompt_logprobs), result[-1]
        chosen = pick(logits, route.sampling, following, route.matcher if answering else None)
        sampled = Sampled(session, following, chosen.token, stamp(), chosen.logprob, chosen.top, prompt)
        return Outbound(session, route.origin, encode(sampled), True)
    hidden = hidden_frame(session, step.position, result, route.wire_dtype)
    data = encode(replace(hidden, trace=stamp()))
    if len(data) > wire.MAX_FRAME_BYTES:
        refusal = Error(session, "too-large", f"{len(data)} bytes of hidden states exceed the frame limit")
        return Outbound(session, route.origin, encode(refusal), True)
    return Outbound(session, route.next_url, data, False)
