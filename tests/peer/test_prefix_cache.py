"""Prefix reuse: a session opened on cached blocks computes what a full prefill computes, a block
many sessions share is held once, eviction drops chains from their ends and never serves blocks
of another layout, and a conversation through a local cluster gives transformers' greedy tokens
turn after turn while its later turns prefill only what is new. The real embedded model."""

from __future__ import annotations

import asyncio

import pytest
import torch
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.model.shard import Shard, even_split, unit_count
from edgeshard.peer.model.text import chat_ids
from edgeshard.peer.pipeline.local import LocalCluster
from edgeshard.peer.wire import PREFIX_BLOCK_TOKENS, SamplingParams, block_hashes, prefix_seed
from transformers import PreTrainedModel

from tests.engine_fixtures import reference_tokens

SEED = prefix_seed("layout-a", "float32")
B = PREFIX_BLOCK_TOKENS


@pytest.fixture(scope="module")
def stages(default_source: GGUFModel) -> tuple[Shard, Shard]:
    return Shard(default_source, 0, 12, prefix_tokens=1024), Shard(default_source, 12, 32, prefix_tokens=1024)


def tokens(count: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 1000, (count,), generator=torch.Generator().manual_seed(seed))


def prefill(stages: tuple[Shard, Shard], session: str, position: int, ids: torch.Tensor) -> torch.Tensor:
    first, last = stages
    return last.run(session, position, first.run(session, position, ids[position:]))


def reuse(shard: Shard, session: str, keys: list[bytes]) -> int:
    """Open `session` on the blocks of `keys` the shard holds, as a stage does."""
    return shard.open_reusing(session, shard.prefixes.take(keys))


def finish(stages: tuple[Shard, Shard], session: str, ids: torch.Tensor) -> None:
    for shard in stages:
        shard.close(session, block_hashes(SEED, ids.tolist()))


def test_a_session_opened_on_cached_blocks_computes_what_a_full_prefill_computes(
    stages: tuple[Shard, Shard],
) -> None:
    history = tokens(100, 1)
    prefill(stages, "turn1", 0, history)
    finish(stages, "turn1", history)
    follow = torch.cat([history[:70], tokens(25, 2)])  # shares 70 tokens: 4 whole blocks
    keys = block_hashes(SEED, follow[:-1].tolist())
    first, last = stages
    held = reuse(last, "turn2", keys[: reuse(first, "turn2", keys)])
    assert held == 70 // B
    reused = prefill(stages, "turn2", held * B, follow)
    fresh = prefill(stages, "fresh", 0, follow)
    assert reused.argmax() == fresh.argmax()
    torch.testing.assert_close(reused, fresh, atol=1e-4, rtol=1e-4)
    # The session goes on decoding from the reused cache like any other.
    token = reused.argmax().reshape(1)
    step = prefill(stages, "turn2", len(follow), torch.cat([follow, token]))
    torch.testing.assert_close(
        step, prefill(stages, "fresh", len(follow), torch.cat([follow, token])), atol=1e-4, rtol=1e-4
    )
    for shard in stages:
        shard.close("turn2")
        shard.close("fresh")


def test_a_later_stage_holding_fewer_blocks_moves_the_start_back(stages: tuple[Shard, Shard]) -> None:
    first, last = stages
    history = tokens(80, 3)
    prefill(stages, "long", 0, history)
    keys = block_hashes(SEED, history.tolist())
    first.close("long", keys)  # five blocks on the first stage,
    last.close("long", keys[:2])  # two on the second
    ask = keys[:4]
    assert reuse(first, "again", ask) == 4
    held = reuse(last, "again", ask[:4])
    assert held == 2
    # The first stage loaded four blocks; the origin feeds from the second stage's two.
    reused = prefill(stages, "again", held * B, history[:70])
    fresh = prefill(stages, "fresh", 0, history[:70])
    torch.testing.assert_close(reused, fresh, atol=1e-4, rtol=1e-4)
    for shard in stages:
        shard.close("again")
        shard.close("fresh")


def test_blocks_many_sessions_share_are_held_once(default_source: GGUFModel) -> None:
    shard = Shard(default_source, 0, 4, prefix_tokens=4096, max_sessions=8)
    system = tokens(4 * B, 4)
    for user in range(8):
        ids = torch.cat([system, tokens(2 * B, 10 + user)])
        shard.run(f"user{user}", 0, ids)
        shard.close(f"user{user}", block_hashes(SEED, ids.tolist()))
    status = shard.prefixes.status()
    assert status["blocks"] == 4 + 8 * 2  # the system prompt's four blocks once, two per user
    assert status["stored_blocks"] == 4 + 8 * 2
    assert status["bytes"] == status["blocks"] * shard.prefixes.block_bytes()
    ids = torch.cat([system, tokens(2 * B, 99)])
    assert reuse(shard, "newcomer", block_hashes(SEED, ids[:-1].tolist())) == 4


def test_eviction_drops_chain_ends_first_and_another_layout_never_matches(default_source: GGUFModel) -> None:
    shard = Shard(default_source, 0, 3, prefix_tokens=4 * B)
    ids = tokens(6 * B, 5)
    shard.run("s", 0, ids)
    keys = block_hashes(SEED, ids.tolist())
    shard.close("s", keys)
    status = shard.prefixes.status()
    assert status["blocks"] == 4 and status["evicted_blocks"] == 2
    assert shard.prefixes.match(keys) == 4  # what remains is the chain's start
    other = block_hashes(prefix_seed("layout-b", "float32"), ids.tolist())
    assert shard.prefixes.match(other) == 0  # the same tokens on another layout are other KV
    assert shard.prefixes.match(block_hashes(prefix_seed("layout-a", "bfloat16"), ids.tolist())) == 0
    # A newer chain pushes the least recently used blocks out, the old chain's end first.
    newer = tokens(2 * B, 6)
    shard.run("n", 0, newer)
    shard.close("n", block_hashes(SEED, newer.tolist()))
    assert shard.prefixes.match(keys) == 2 and shard.prefixes.match(block_hashes(SEED, newer.tolist())) == 2


def test_a_stage_without_layers_holds_every_prefix(default_source: GGUFModel) -> None:
    embedding = Shard(default_source, 0, 1, prefix_tokens=1024)
    keys = block_hashes(SEED, list(range(5 * B)))
    assert reuse(embedding, "s", keys) == 5


def test_a_closed_session_without_keys_keeps_nothing(default_source: GGUFModel) -> None:
    shard = Shard(default_source, 0, 3, prefix_tokens=1024)
    shard.run("s", 0, tokens(3 * B, 7))
    shard.close("s")
    assert shard.prefixes.status()["blocks"] == 0
    off = Shard(default_source, 0, 3, prefix_tokens=0)
    ids = tokens(3 * B, 8)
    off.run("s", 0, ids)
    off.close("s", block_hashes(SEED, ids.tolist()))
    assert off.prefixes.status()["blocks"] == 0


async def _conversation(
    source: GGUFModel, turns: list[str], reuse: bool, new_tokens: int
) -> tuple[list[list[int]], list[int], list[list[int]]]:
    """Each turn's greedy answer, the prompt tokens taken from the caches, each turn's prompt."""
    tokenizer, eos = source.tokenizer(), source.config.eos_token_id
    ranges = even_split(unit_count(source.config), 3)
    answers, reused, prompts = [], [], []
    messages: list[dict[str, str]] = []
    async with LocalCluster("default", ranges, source=source) as cluster:
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            ids = chat_ids(tokenizer, messages)
            got: list[int] = []
            stream = cluster.origin.generate(
                cluster.route, ids, SamplingParams(), new_tokens, [eos], reused=got, reuse=reuse
            )
            answer = [token async for token in stream]
            answers.append(answer)
            reused.append(got[0])
            prompts.append(ids)
            messages.append({"role": "assistant", "content": tokenizer.decode(answer, skip_special_tokens=True)})
    return answers, reused, prompts


def test_a_conversation_reuses_its_history_and_keeps_transformers_tokens(
    default_source: GGUFModel, reference_model: PreTrainedModel
) -> None:
    turns = ["Name a colour.", "Why is the sky that colour?", "Say it again in one sentence."]
    answers, reused, prompts = asyncio.run(_conversation(default_source, turns, True, 24))
    uncached, none, _ = asyncio.run(_conversation(default_source, turns, False, 24))
    assert answers == uncached and none == [0, 0, 0]
    eos = default_source.config.eos_token_id
    for ids, answer in zip(prompts, answers, strict=True):
        assert answer == reference_tokens(reference_model, ids, 24, eos)
    assert reused[0] == 0
    for turn in (1, 2):  # the whole blocks of what the previous turn computed that this prompt repeats
        answer = answers[turn - 1]
        fed = prompts[turn - 1] + (answer if len(answer) < 24 else answer[:-1])  # a last token is not fed
        common = next(i for i, (x, y) in enumerate(zip([*fed, -1], prompts[turn], strict=False)) if x != y)
        assert reused[turn] == min(common, len(prompts[turn]) - 1) // B * B
        assert reused[turn] >= len(prompts[turn - 1]) - B
