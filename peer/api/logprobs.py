"""Tokens' log-probabilities (the answer's, and an echoed prompt's) in OpenAI's two shapes (pure
but for the tokenizer's decode): chat's `logprobs.content` entries and the legacy completions'
parallel lists."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from ..wire import Sampled

FLOOR = -9999.0  # what -inf becomes: JSON has no infinities (llama.cpp's server writes the same floor)


def _value(logprob: float) -> float:
    return max(logprob, FLOOR)


class TokenTexts:
    """Each token's own text, decoded once."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        if token not in self._texts:
            self._texts[token] = str(self._tokenizer.decode([token]))
        return self._texts[token]


def chat_entries(texts: TokenTexts, picks: Sequence[Sampled]) -> list[dict[str, Any]]:
    """OpenAI chat's `choices[].logprobs.content`: per token its text, bytes, log-probability,
    and the top alternatives."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = texts(token)
        return {"token": text, "logprob": _value(logprob), "bytes": list(text.encode())}

    return [entry(p.token_id, p.logprob or 0.0) | {"top_logprobs": [entry(t, lp) for t, lp in p.top]} for p in picks]


def text_lists(texts: TokenTexts, picks: Sequence[Sampled], offset: int) -> dict[str, Any]:
    """The legacy completions' `choices[].logprobs`: tokens, their log-probabilities, the top
    alternatives as {text: logprob} maps, and where each token starts in the choice's text
    (`offset`: the length of the text before the first, an echoed prompt)."""
    tokens, starts = [], []
    for pick in picks:
        starts.append(offset)
        tokens.append(texts(pick.token_id))
        offset += len(tokens[-1])
    return {  # a prompt's first token has no log-probability: null, as OpenAI writes it
        "tokens": tokens,
        "token_logprobs": [None if p.logprob is None else _value(p.logprob) for p in picks],
        "top_logprobs": [None if p.logprob is None else {texts(t): _value(lp) for t, lp in p.top} for p in picks],
        "text_offset": starts,
    }
