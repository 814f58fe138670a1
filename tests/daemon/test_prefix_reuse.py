"""Prefix reuse on real `edgeshard-peer` processes: a conversation's turns prefill only what is
new and still give transformers' greedy tokens, the same as with `cache_prompt: false`; users
sharing one system prompt share its blocks; a SIGKILLed stage in the middle of a cached
conversation fails over to the same tokens, and the conversation goes on reusing on the new
layout; and the figures show in usage, /v1/status and /metrics.

Four peers on loopback (bootstrap lists), 256 MiB each: the model needs three, one is spare.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.model.text import chat_ids
from edgeshard.peer.wire import PREFIX_BLOCK_TOKENS
from transformers import PreTrainedModel

from tests.engine_fixtures import reference_tokens

from .peers import Peer, agreed, client, make_peers, running, wait_until

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
ANSWER = 20
TURNS = ["Name a fruit.", "What colour is it?", "Where does it grow?", "Tell me a story about it."]
SYSTEM = "You are a patient teacher. " * 12 + "Answer in one short sentence."


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Peer]]:
    with running(make_peers(tmp_path_factory.mktemp("prefix"), 4, mdns=False)) as peers:
        yield peers


def chat(peer: Peer, messages: list[dict[str, str]], cache: bool = True) -> Any:
    return client(peer, 600).chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=ANSWER,
        extra_body={} if cache else {"cache_prompt": False},
    )


def cached(answer: Any) -> int:
    return int(answer.usage.prompt_tokens_details.cached_tokens)


def expected(source: GGUFModel, model: PreTrainedModel, messages: list[dict[str, str]]) -> list[int]:
    ids = chat_ids(source.tokenizer(), messages)
    return reference_tokens(model, ids, ANSWER, source.config.eos_token_id)


def entry_peer(peers: list[Peer]) -> Peer:
    plan = agreed(peers)
    assert plan is not None
    return next(p for p in peers if p.name == plan["stages"][0]["device"])


def test_a_conversation_reuses_its_history_with_exact_tokens_and_fails_over_mid_way(
    peers: list[Peer], default_source: GGUFModel, reference_model: PreTrainedModel
) -> None:
    entry = entry_peer(peers)
    tokenizer = default_source.tokenizer()
    messages: list[dict[str, str]] = []
    previous_prompt = 0
    for turn, question in enumerate(TURNS[:3]):
        messages.append({"role": "user", "content": question})
        answer = chat(entry, messages)
        plain = chat(entry, messages, cache=False)
        tokens = answer.model_extra["edgeshard"]["token_ids"]
        assert (
            tokens == plain.model_extra["edgeshard"]["token_ids"] == expected(default_source, reference_model, messages)
        )
        assert cached(plain) == 0
        if turn:  # everything up to the previous answer's last whole block, at least
            assert cached(answer) >= previous_prompt - PREFIX_BLOCK_TOKENS, (turn, cached(answer))
            assert cached(answer) % PREFIX_BLOCK_TOKENS == 0 and cached(answer) < answer.usage.prompt_tokens
        previous_prompt = answer.usage.prompt_tokens
        messages.append({"role": "assistant", "content": tokenizer.decode(tokens, skip_special_tokens=True)})

    # Turn four streams; its middle stage is SIGKILLed after a few tokens.
    plan = agreed(peers)
    assert plan is not None
    middle = next(p for p in peers if p.name == plan["stages"][1]["device"])
    messages.append({"role": "user", "content": TURNS[3]})
    want = expected(default_source, reference_model, messages)
    assert len(want) > 6
    stream = client(entry, 600).chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=ANSWER, stream=True
    )  # type: ignore[arg-type]
    text, last, pieces = "", None, 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1
            if pieces == 4 and not middle.extra.get("killed"):
                middle.extra["killed"] = True
                middle.signal(signal.SIGKILL)
            text += chunk.choices[0].delta.content
        last = chunk
    assert middle.extra.get("killed") and last is not None
    extra = last.model_extra["edgeshard"]
    assert extra["token_ids"] == want and len(extra["failovers"]) == 1
    assert text == tokenizer.decode(want, skip_special_tokens=True)

    # The conversation goes on on the survivors' layout, reusing what the replay computed there.
    survivors = [p for p in peers if p is not middle]
    wait_until(lambda: agreed(survivors), 60, "the survivors to agree on a new plan", survivors)
    messages.append({"role": "assistant", "content": text})
    messages.append({"role": "user", "content": "Thank you."})
    after = chat(entry_peer(survivors), messages)
    assert after.model_extra["edgeshard"]["token_ids"] == expected(default_source, reference_model, messages)
    assert cached(after) > 0


def test_users_sharing_a_system_prompt_share_its_blocks_and_it_shows(
    peers: list[Peer], default_source: GGUFModel, reference_model: PreTrainedModel
) -> None:
    live = [p for p in peers if not p.extra.get("killed")]
    entry = entry_peer(live)
    conversations = [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"What is {n} plus {n}?"}] for n in range(5)
    ]
    first = chat(entry, conversations[0])  # the system prompt's blocks land in every stage's cache
    assert first.model_extra["edgeshard"]["token_ids"] == expected(default_source, reference_model, conversations[0])
    system_tokens = len(chat_ids(default_source.tokenizer(), [{"role": "system", "content": SYSTEM}]))
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda messages: chat(entry, messages), conversations[1:]))
    for messages, answer in zip(conversations[1:], answers, strict=True):
        assert answer.model_extra["edgeshard"]["token_ids"] == expected(default_source, reference_model, messages)
        assert cached(answer) >= system_tokens - 2 * PREFIX_BLOCK_TOKENS, (cached(answer), system_tokens)

    status = json.loads(urllib.request.urlopen(entry.api + "/v1/status", timeout=30).read())
    assert status["api"]["cached_prompt_tokens"] > 0
    assert status["shard"]["prefix_cache"]["blocks"] > 0 and status["shard"]["prefix_cache"]["bytes"] > 0
    metrics = urllib.request.urlopen(entry.api + "/metrics", timeout=30).read().decode()
    assert "edgeshard_prompt_tokens_cached_total" in metrics and "edgeshard_prefix_cache_bytes" in metrics
