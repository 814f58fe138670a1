"""Split inference is exact: the same greedy tokens as transformers' single-process generate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from edgeshard.peer.model.files import GGUFModel, ModelSource, open_model
from edgeshard.peer.model.shard import even_split, unit_count
from edgeshard.peer.pipeline.local import LocalCluster
from edgeshard.peer.wire import SamplingParams
from transformers import AutoModelForCausalLM

from tests.engine_fixtures import NEW_TOKENS, PROMPTS, chat_ids, reference_tokens

pytestmark = pytest.mark.slow
GREEDY = SamplingParams()


async def _generate(
    source: ModelSource,
    model: str,
    stages: int,
    ids: list[int],
    processes: bool = False,
    sampling: SamplingParams = GREEDY,
    new_tokens: int = NEW_TOKENS,
) -> list[int]:
    eos = source.config.eos_token_id
    ranges = even_split(unit_count(source.config), stages)
    async with LocalCluster(model, ranges, processes=processes, source=source) as cluster:
        return [t async for t in cluster.origin.generate(cluster.route, ids, sampling, new_tokens, [eos])]


@pytest.fixture(scope="module")
def references(default_source: GGUFModel, reference_model: object) -> dict[str, list[int]]:
    eos = default_source.config.eos_token_id
    return {p: reference_tokens(reference_model, chat_ids(default_source, p), NEW_TOKENS, eos) for p in PROMPTS}  # type: ignore[arg-type]


def test_references_are_long_enough(references: dict[str, list[int]]) -> None:
    assert all(len(tokens) >= NEW_TOKENS for tokens in references.values())


@pytest.mark.parametrize("stages", [1, 2, 3, 4])
def test_default_model_split_matches_transformers(
    stages: int, default_source: GGUFModel, references: dict[str, list[int]]
) -> None:
    for prompt in PROMPTS:
        ours = asyncio.run(_generate(default_source, "default", stages, chat_ids(default_source, prompt)))
        assert ours == references[prompt], f"{stages} stages diverge on {prompt!r}"


def test_stages_in_separate_processes_match(default_source: GGUFModel, references: dict[str, list[int]]) -> None:
    prompt = PROMPTS[0]
    ours = asyncio.run(_generate(default_source, "default", 3, chat_ids(default_source, prompt), processes=True))
    assert ours == references[prompt]


@pytest.mark.parametrize("stages", [1, 2, 3, 4])
def test_random_hf_model_split_matches_transformers(stages: int, random_hf_model: Path) -> None:
    source = open_model(str(random_hf_model))
    reference = AutoModelForCausalLM.from_pretrained(str(random_hf_model), dtype=torch.float32).eval()
    for prompt in PROMPTS[:2]:
        ids = chat_ids(source, prompt)
        expected = reference_tokens(reference, ids, NEW_TOKENS, source.config.eos_token_id)
        assert len(expected) >= 32
        ours = asyncio.run(_generate(source, str(random_hf_model), stages, ids))
        assert ours == expected


def test_seeded_sampling_is_reproducible_and_split_independent(default_source: GGUFModel) -> None:
    ids = chat_ids(default_source, PROMPTS[1])
    sampling = SamplingParams(temperature=0.9, top_k=50, top_p=0.95, seed=42)
    one = asyncio.run(_generate(default_source, "default", 1, ids, sampling=sampling, new_tokens=24))
    three = asyncio.run(_generate(default_source, "default", 3, ids, sampling=sampling, new_tokens=24))
    again = asyncio.run(_generate(default_source, "default", 3, ids, sampling=sampling, new_tokens=24))
    other = asyncio.run(
        _generate(default_source, "default", 3, ids, sampling=SamplingParams(0.9, 50, 0.95, seed=43), new_tokens=24)
    )
    assert one == three == again
    assert other != one
