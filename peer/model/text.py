"""Text around the token stream: chat templates, stop tokens and strings, incremental decoding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PretrainedConfig, PreTrainedTokenizerBase


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, Any]], **extra: Any) -> list[int]:
    """Token ids of a conversation with the model's chat template, ready for the answer
    (`extra`: the template's own arguments, such as `tools`)."""
    ids: Any = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, **extra)
    return [int(i) for i in (ids if isinstance(ids, list) else ids["input_ids"])]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str | None, chat: str | None) -> list[int]:
    """Token ids of the raw prompt, or of the chat message with the model's template."""
    if prompt is not None:
        return list(tokenizer.encode(prompt))
    message = chat if chat is not None else "Tell me about the moon in three sentences."
    return chat_ids(tokenizer, [{"role": "user", "content": message}])


def stop_token_ids(config: PretrainedConfig) -> list[int]:
    """The model's end-of-sequence id(s)."""
    eos = config.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


@dataclass
class TextStream:
    """Decodes a growing token list incrementally; yields only text that is final, cut at a
    stop string.

    Each token decodes only a short window (vLLM's prefix/read offsets): the tokens since the
    last complete character, with the few before them as context, so multi-byte characters and
    merges come out as a whole-list decode gives them, at constant cost per token instead of a
    decode of the whole answer every time.
    """

    tokenizer: PreTrainedTokenizerBase
    stops: Sequence[str] = ()
    tokens: list[int] = field(default_factory=list)
    shown: str = ""
    stopped: bool = False
    decoded: str = ""  # the text of tokens[:_read]
    _prefix: int = 0  # where the context window starts
    _read: int = 0  # tokens whose text is in `decoded`

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    @property
    def text(self) -> str:
        """All text so far, up to the first stop string."""
        hits = [self.decoded.index(s) for s in self.stops if s and s in self.decoded]
        if hits:
            self.stopped = True
            return self.decoded[: min(hits)]
        return self.decoded

    def add(self, token: int) -> str:
        """Take one token; return the newly visible text (sets `stopped` at a stop string)."""
        self.tokens.append(token)
        before = self._decode(self.tokens[self._prefix : self._read])
        after = self._decode(self.tokens[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd") or not after.startswith(before):
            return ""  # an incomplete character (or nothing visible yet): wait for more tokens
        self.decoded += after[len(before) :]
        self._prefix, self._read = self._read, len(self.tokens)
        visible = self.text
        if not visible.startswith(self.shown):
            return ""
        new, self.shown = visible[len(self.shown) :], visible
        return new
