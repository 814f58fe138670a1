"""Constrained decoding: the answer must match a grammar (structured output, forced tool calls).

llguidance (the engine llama.cpp and vLLM also embed) compiles a grammar — from a JSON schema,
for instance — against the tokenizer, then says before each token which tokens may come next (a
bit mask over the vocabulary, about 0.3 ms for the embedded model's 49k tokens). It is a single
wheel with no dependencies; xgrammar, the other candidate, pulls triton and transformers'
tokenizer stack with it and needs a C++ toolchain at first use on some platforms.

The mask is applied where sampling happens (the last stage), to the logits before temperature,
top-k and top-p, so every sampled token keeps the answer inside the grammar; at the grammar's end
only an end-of-sequence token remains. The origin checks a grammar before any work (a 400 names
what is wrong); the last stage compiles it again, and consumes the answer tokens a fail-over
replays, so a replayed constrained answer continues exactly where it stopped.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

import llguidance
import llguidance.hf
import torch
from transformers import PreTrainedTokenizerBase

from .files import ModelSource
from .text import stop_token_ids

MAX_SCHEMA_BYTES = 64 * 1024  # a JSON schema in a request: bigger ones are refused, not compiled
# Bounds on what compiling one grammar may cost, below llguidance's defaults, so a hostile schema
# is refused at compile time. The per-token fuel keeps llguidance's default: it is spent while
# answering, where running out would end an answer already streaming.
INITIAL_FUEL, MAX_GRAMMAR_SIZE = 200_000, 100_000
PASSED_KEPT = 64
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False}  # compact JSON: a small model cannot ramble in spaces


class GrammarError(ValueError):
    """The grammar does not compile (or is beyond the bounds): a fault of the request."""


def json_grammar(schema: dict[str, Any] | None) -> str:
    """The grammar of a JSON value matching `schema` (None: any JSON object, as OpenAI's
    `json_object`). GrammarError for a schema that is not a JSON object or too big."""
    if schema is None:
        schema = {"type": "object"}
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError, RecursionError) as error:
        raise GrammarError(f"the schema is not JSON: {error}") from None
    if len(text) > MAX_SCHEMA_BYTES:
        raise GrammarError(f"the schema takes {len(text)} bytes; at most {MAX_SCHEMA_BYTES}")
    try:
        grammar: str = llguidance.LLMatcher.grammar_from_json_schema(text, overrides=JSON_OPTIONS)  # type: ignore[arg-type]
    except ValueError as error:
        raise GrammarError(str(error)) from None
    return grammar


def _limits() -> llguidance.LLParserLimits:
    return llguidance.LLParserLimits(initial_lexer_fuel=INITIAL_FUEL, max_grammar_size=MAX_GRAMMAR_SIZE)


class Grammars:
    """Grammars compiled for one model's tokenizer. The tokenizer (`tokenizer()`) and its
    llguidance form are made at first use (a few tenths of a second), once."""

    def __init__(
        self, tokenizer: Callable[[], PreTrainedTokenizerBase], vocab_size: int, stop_ids: Sequence[int]
    ) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._stop_ids = list(stop_ids)
        self._ll: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()
        self._passed: dict[str, None] = {}  # grammars that compiled lately (agents repeat theirs)

    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._ll is None:
                eos = self._stop_ids or None
                self._ll = llguidance.hf.from_tokenizer(self._tokenizer(), n_vocab=self._vocab_size, eos_token=eos)  # type: ignore[arg-type]
            return self._ll

    def check(self, grammar: str) -> None:
        """GrammarError when `grammar` does not compile for this tokenizer within the bounds."""
        if grammar in self._passed:
            return
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            grammar, self.ll_tokenizer(), limits=_limits()
        )
        if failed:
            raise GrammarError(messages[0] if messages else "the grammar does not compile")
        self._passed[grammar] = None
        while len(self._passed) > PASSED_KEPT:
            del self._passed[next(iter(self._passed))]

    def matcher(self, grammar: str, answered: Sequence[int] = ()) -> Matcher:
        """A matcher at the answer's start, having consumed `answered` (GrammarError when the
        grammar does not compile or the tokens do not match it)."""
        inner = llguidance.LLMatcher(self.ll_tokenizer(), grammar, log_level=0, limits=_limits())
        if inner.is_error():
            raise GrammarError(inner.get_error())
        if answered and not inner.consume_tokens(list(answered)):
            raise GrammarError(f"the answer so far does not match the grammar: {inner.get_error()}")
        return Matcher(inner, self._vocab_size)


class Matcher:
    """One answer's place in its grammar: masks the next token's logits, then takes the token."""

    def __init__(self, inner: llguidance.LLMatcher, vocab_size: int) -> None:
        self._inner = inner
        self._words = (vocab_size + 31) // 32
        self._bits = torch.arange(32, dtype=torch.int32)

    def allowed(self) -> torch.Tensor:
        """Which tokens may come next: a bool tensor [vocab]."""
        mask = torch.frombuffer(bytearray(self._inner.compute_bitmask()), dtype=torch.int32)[: self._words]
        return ((mask.unsqueeze(1) >> self._bits) & 1).bool().flatten()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` [V] with every token the grammar forbids at -inf (a new tensor)."""
        allowed = self.allowed()[: logits.shape[0]]
        if allowed.shape[0] < logits.shape[0]:  # rows beyond the tokenizer's vocabulary: never allowed
            allowed = torch.cat([allowed, torch.zeros(logits.shape[0] - allowed.shape[0], dtype=torch.bool)])
        return logits.masked_fill(~allowed, float("-inf"))

    def consume(self, token: int) -> None:
        """Advance past `token` (which the mask allowed). GrammarError when it did not fit."""
        if not self._inner.consume_token(token):
            raise GrammarError(f"token {token} does not fit the grammar: {self._inner.get_error()}")

    def accepting(self) -> bool:
        """Whether the answer so far is complete as it stands (more may still follow)."""
        return bool(self._inner.is_accepting())

    def done(self) -> bool:
        """Whether the grammar is complete (only an end-of-sequence token may follow)."""
        return bool(self._inner.is_stopped())


def source_grammars(source: ModelSource) -> Grammars:
    """The grammars of a model file's tokenizer (loaded when the first grammar comes)."""
    config = source.config
    return Grammars(source.tokenizer, int(config.vocab_size), stop_token_ids(config))
