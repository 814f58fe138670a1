"""`--kv-cache int8`: the pool holds about a third of float32's bytes, the next-token choices stay
those of float KV (teacher-forced over a real text on the embedded model), prefix reuse carries
the scales along, and the planner counts the smaller cache."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.model.profile import kv_cache_bytes
from edgeshard.peer.model.shard import Shard
from edgeshard.peer.wire import block_hashes, prefix_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))
from kv_int8 import compare, kv_bytes_per_position, logits_of

from .test_prefix_cache import reuse

TEXT = (Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md").read_text()


def test_int8_keeps_float_kvs_choices_in_under_a_third_of_the_bytes() -> None:
    result = compare("default", "float32", 400, TEXT)
    assert result["kv_bytes_ratio"] < 0.32  # 1.25 bytes a value against 4
    # Measured 99.2% over 1,199 positions (scripts/bench/kv_int8.py); 400 positions leave room.
    assert result["top1_agreement"] >= 0.97, result
    assert abs(result["perplexity_int8"] / result["perplexity_float"] - 1) < 0.02, result


def test_reused_int8_blocks_compute_what_a_full_prefill_computes(default_source: GGUFModel) -> None:
    shard = Shard(default_source, 0, 8, prefix_tokens=512, kv_cache="int8")
    ids = [int(i) for i in default_source.tokenizer().encode(TEXT)][:90]
    seed = prefix_seed("", "float32")
    shard.run("first", 0, torch.tensor(ids))
    shard.close("first", block_hashes(seed, ids))
    held = reuse(shard, "second", block_hashes(seed, ids[:-1]))
    assert held == 5
    reused = shard.run("second", held * 16, torch.tensor(ids[held * 16 :]))
    fresh = shard.run("fresh", 0, torch.tensor(ids))[held * 16 :]
    torch.testing.assert_close(reused, fresh, atol=1e-4, rtol=1e-4)
    floats = Shard(default_source, 0, 8, prefix_tokens=512).prefixes.block_bytes()
    assert shard.prefixes.block_bytes() == floats * 1.25 / 4  # the cache keeps blocks in the pool's form


def test_the_planner_counts_the_int8_cache(default_source: GGUFModel) -> None:
    config = default_source.config
    floats = kv_cache_bytes(config, torch.float32, 2048, 8, 4096)
    assert kv_cache_bytes(config, torch.float32, 2048, 8, 4096, "int8") == floats * 1.25 / 4
    shard = Shard(default_source, 0, 4, kv_cache="int8", max_context=256)
    logits_of(shard, list(range(100)))
    per_position = kv_bytes_per_position(shard)
    assert per_position == kv_cache_bytes(config, torch.float32, 1, 1, 0, "int8") * 3  # three layers
