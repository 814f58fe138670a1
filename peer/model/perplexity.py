"""Perplexity of a text, scored as llama.cpp's `llama-perplexity` scores it.

The text's tokens are cut into chunks of `context` tokens (a shorter rest is dropped); each
chunk starts from an empty cache with its first token replaced by BOS (when the model has one),
and only its second half is scored: the logits at position j give the log-probability of token
j + 1 for j in [context/2, context − 1). The perplexity is exp of the mean negative
log-probability over every scored token, so the same file and text give numbers comparable to
llama.cpp's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .shard import Shard, Step


@dataclass(frozen=True)
class Scored:
    """A text's perplexity and the log-probability of every token scored (None: context)."""

    perplexity: float
    token_ids: list[int]
    logprobs: list[float | None]
    chunks: int
    context: int

    @property
    def scored(self) -> int:
        return sum(p is not None for p in self.logprobs)


def chunk_starts(tokens: int, context: int) -> list[int]:
    """Where each whole chunk of `context` tokens starts."""
    if context < 4:
        raise ValueError("a context of at least 4 tokens is needed")
    return list(range(0, tokens - context + 1, context))


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits[i])[targets[i]] for each row i, in float64 (a sum of thousands)."""
    return torch.log_softmax(logits.double(), dim=-1).gather(-1, targets[:, None])[:, 0]


def chunk_logits(shards: Sequence[Shard], ids: list[int], session: str) -> torch.Tensor:
    """Every position's logits [T, V] for `ids` fed from position 0 through chained shards."""
    inputs: torch.Tensor = torch.tensor(ids)
    for shard in shards:
        (output,) = shard.run_batch([Step(session, 0, inputs, every_row=True)])
        if isinstance(output, Exception):
            raise output
        shard.close(session)
        inputs = output
    return inputs


def perplexity(shards: Sequence[Shard], ids: list[int], context: int, bos: int | None) -> Scored:
    """Score `ids` (the whole text's tokens) through `shards`, which cover the model in order."""
    starts = chunk_starts(len(ids), context)
    if not starts:
        raise ValueError(f"the text has {len(ids)} tokens: fewer than one chunk of {context}")
    logprobs: list[float | None] = [None] * len(ids)
    first = context // 2
    for index, start in enumerate(starts):
        chunk = ids[start : start + context]
        if bos is not None:
            chunk = [bos, *chunk[1:]]
        logits = chunk_logits(shards, chunk, f"perplexity-{index}")
        scored = token_logprobs(logits[first : context - 1], torch.tensor(chunk[first + 1 :]))
        for offset, value in enumerate(scored.tolist()):
            logprobs[start + first + 1 + offset] = value
    values = [p for p in logprobs if p is not None]
    return Scored(math.exp(-sum(values) / len(values)), list(ids), logprobs, len(starts), context)
