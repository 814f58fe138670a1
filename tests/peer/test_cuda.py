"""On a CUDA device, greedy float32 tokens equal transformers' `generate` on the same GPU on
every path: one session a pass or all sessions in one pass, eager or compiled, one shard or two
stages over real sockets with every session at once. The model is a small random Llama built
here (no model file), so the check needs only torch and transformers on the GPU machine.

Skipped where there is no CUDA device (CI has none): `scripts/gpu-check` runs it on a lent GPU.
`EDGESHARD_TEST_DEVICE=cpu` runs the same checks on a CPU (a rehearsal of the GPU run)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import torch
from edgeshard.peer.model.files import HuggingFaceModel
from edgeshard.peer.model.shard import Shard, even_split, unit_count
from edgeshard.peer.pipeline.local import LocalCluster
from edgeshard.peer.wire import SamplingParams
from transformers import LlamaConfig, LlamaForCausalLM

from tests.engine_fixtures import greedy_tokens

DEVICE = os.environ.get("EDGESHARD_TEST_DEVICE", "cuda")
NEW_TOKENS = 16
PROMPTS = {f"s{i}": [1, *range(10 + 7 * i, 22 + 9 * i)] for i in range(8)}  # 8 sessions, 13 to 27 tokens
# 8 sessions of one length: a pass attends with no mask at all (batch.py's dense pass)
EQUAL = {f"e{i}": [1, *range(40 + 11 * i, 60 + 11 * i)] for i in range(8)}
SETS = {"lengths": PROMPTS, "equal": EQUAL}

pytestmark = pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA device here"
)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("random-llama")
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=0.2,  # wide logits: a top token is never a near tie
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(3)
    LlamaForCausalLM(config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def source(directory: Path) -> HuggingFaceModel:
    return HuggingFaceModel(directory, directory / "cache")


@pytest.fixture(scope="module")
def expected(directory: Path) -> dict[str, list[int]]:
    """transformers' greedy tokens on the device, each prompt alone (both sets)."""
    model = LlamaForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    torch.nn.Module.to(model, torch.device(DEVICE))
    model.train(False)
    model.generation_config.eos_token_id = None  # the shard's argmax knows no end token either
    tokens = {}
    with torch.inference_mode():
        for session, ids in {**PROMPTS, **EQUAL}.items():
            inputs = torch.tensor([ids], device=DEVICE)
            output = model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
            )
            tokens[session] = output[0, len(ids) :].tolist()
    return tokens


@pytest.mark.parametrize("compile_step", [False, True], ids=["eager", "compiled"])
def test_one_shard_batched_or_not_gives_transformers_tokens(
    compile_step: bool, source: HuggingFaceModel, expected: dict[str, list[int]]
) -> None:
    shard = Shard(source, 0, unit_count(source.config), device=DEVICE, compile_step=compile_step)
    assert shard.parts.compiled == compile_step
    assert next(iter(shard.layers.parameters())).device.type == torch.device(DEVICE).type
    for prompts in SETS.values():
        want = {session: expected[session] for session in prompts}
        assert greedy_tokens(shard, prompts, NEW_TOKENS, together=False) == want
        assert greedy_tokens(shard, prompts, NEW_TOKENS, together=True) == want


def test_two_stages_with_every_session_at_once_give_transformers_tokens(
    source: HuggingFaceModel, expected: dict[str, list[int]]
) -> None:
    async def run() -> tuple[dict[str, list[int]], list[float]]:
        ranges = even_split(unit_count(source.config), 2)
        async with LocalCluster("random", ranges, source=source, device=DEVICE) as cluster:

            async def one(ids: list[int]) -> list[int]:
                return [t async for t in cluster.origin.generate(cluster.route, ids, SamplingParams(), NEW_TOKENS)]

            answers = await asyncio.gather(*(one(ids) for ids in PROMPTS.values()))
            batches = [s.batcher.steps / max(1, s.batcher.passes) for s in cluster._stages]
            return dict(zip(PROMPTS, answers, strict=True)), batches

    got, batches = asyncio.run(run())
    assert got == {session: expected[session] for session in PROMPTS}
    assert min(batches) > 1.5  # the sessions did share passes
