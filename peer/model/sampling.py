"""Sampling on the last stage: greedy, temperature, top-k, top-p; randomness keyed by (seed, position).

Keying the random draw by the position (not by a generator's running state) makes a replay after
fail-over draw exactly the same tokens: a new last stage, asked for position p, samples what the
old one would have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..wire import SamplingParams, Scored
from .grammar import Matcher


def _generator(seed: int, position: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{position}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sample(logits: torch.Tensor, params: SamplingParams, position: int) -> int:
    """The token for `position` from the logits [V] of the position before it."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    scores = logits.double() / params.temperature
    if params.top_k:
        kth = torch.topk(scores, min(params.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probabilities = torch.softmax(scores, dim=-1)
    if params.top_p < 1:
        ordered, order = torch.sort(probabilities, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = torch.cumsum(ordered, dim=-1) - ordered >= params.top_p
        ordered[drop] = 0
        probabilities = torch.zeros_like(probabilities).scatter(0, order, ordered)
    return int(torch.multinomial(probabilities, 1, generator=_generator(params.seed, position)))


@dataclass(frozen=True)
class Pick:
    """A sampled token, with its log-probability and the top tokens' when they were asked for."""

    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


def pick(logits: torch.Tensor, params: SamplingParams, position: int, matcher: Matcher | None = None) -> Pick:
    """Sample the token for `position` within the grammar of `matcher` (when given, which then
    takes the token), with the log-probabilities the params ask for. These are the model's own
    (before the grammar's mask, temperature, top-k and top-p), as OpenAI reports them; nothing
    is computed when they are not asked for."""
    token = sample(matcher.mask(logits) if matcher is not None else logits, params, position)
    if matcher is not None:
        matcher.consume(token)
    if params.logprobs < 0:
        return Pick(token)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top = torch.topk(logprobs, params.logprobs) if params.logprobs else None
    pairs = tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else ()
    return Pick(token, float(logprobs[token]), pairs)


def score_rows(logits: torch.Tensor, tokens: Sequence[int], top: int) -> tuple[Scored, ...]:
    """The model's log-probability of each of `tokens` under the logits row before it ([T, V],
    T = len(tokens)), with the `top` most likely tokens of each row (a prompt's own scores).
    A row's log-probabilities are its logits less their log-sum-exp: no second [T, V] matrix."""
    if not tokens:
        return ()
    rows = logits[: len(tokens)].float()
    norm = torch.logsumexp(rows, dim=-1)
    picked = rows.gather(1, torch.tensor(list(tokens), dtype=torch.long).unsqueeze(1)).squeeze(1)
    chosen = (picked - norm).tolist()
    if not top:
        return tuple((float(lp), ()) for lp in chosen)
    best = torch.topk(rows, top, dim=-1)
    values = (best.values - norm.unsqueeze(1)).tolist()
    pairs = [tuple(zip(ids, lps, strict=True)) for ids, lps in zip(best.indices.tolist(), values, strict=True)]
    return tuple((float(lp), pair) for lp, pair in zip(chosen, pairs, strict=True))
