"""Incremental decoding, stop strings, and the chat REPL as a user drives it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.model.text import TextStream, chat_ids, stop_token_ids


def test_stream_releases_text_once_and_cuts_at_stop_strings(default_source: GGUFModel) -> None:
    tokenizer = default_source.tokenizer()
    ids = tokenizer.encode("Héllo wörld, one two three four")
    stream = TextStream(tokenizer, stops=[" three"])
    pieces = []
    for token in ids:
        pieces.append(stream.add(token))
        if stream.stopped:
            break
    assert "".join(pieces) == stream.text == "Héllo wörld, one two"
    assert stream.stopped


def test_incremental_text_equals_a_whole_decode(default_source: GGUFModel) -> None:
    """Window decoding gives what decoding the whole list gives, multi-byte characters included,
    and each token decodes a bounded window, not the whole answer."""
    tokenizer = default_source.tokenizer()
    text = "Grüße aus Zürich 🌍🚀 — 中文字符 and \u00e9t\u00e9! " * 20
    ids = tokenizer.encode(text)
    stream = TextStream(tokenizer)
    released = "".join(stream.add(token) for token in ids)
    assert released == stream.text == tokenizer.decode(ids, skip_special_tokens=True)
    assert stream._read - stream._prefix < 16  # the window stayed short


def test_chat_ids_and_stop_tokens(default_source: GGUFModel) -> None:
    tokenizer = default_source.tokenizer()
    ids = chat_ids(tokenizer, [{"role": "user", "content": "hi"}])
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    assert stop_token_ids(default_source.config) == [2]


@pytest.mark.slow
def test_chat_repl_keeps_the_conversation() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgeshard.peer.cli", "chat", "--stages", "2", "--max-tokens", "24"],
        input="What is the capital of France?\nAnd of Italy?\n/reset\n/quit\n",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    answers = [line for line in result.stdout.splitlines() if "assistant>" in line]
    assert len(answers) == 2
    assert "Paris" in answers[0] and "Rome" in answers[1]  # the second answer needed the first turn
    assert "(conversation forgotten)" in result.stdout
