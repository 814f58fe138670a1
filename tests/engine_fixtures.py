"""Fixtures for the engine tests: the default model, transformers' reference, a random HF model."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

# One cache for the whole run (subprocesses inherit it), never the user's own cache.
os.environ.setdefault("EDGESHARD_CACHE", tempfile.mkdtemp(prefix="edgeshard-test-cache-"))

from edgeshard.peer.model.files import GGUFModel, HuggingFaceModel, default_model_path, open_model
from edgeshard.peer.model.shard import Shard, Step
from edgeshard.peer.model.text import prompt_ids

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a rainbow forms, step by step.",
    "List some tips for staying focused while studying.",
]
NEW_TOKENS = 64


@pytest.fixture(scope="session")
def default_source() -> GGUFModel:
    source = open_model("default")
    assert isinstance(source, GGUFModel)
    return source


@pytest.fixture(scope="session")
def reference_model() -> PreTrainedModel:
    """transformers' own single-process model, loaded by transformers from the same GGUF file."""
    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval()


def chat_ids(source: GGUFModel | HuggingFaceModel, message: str) -> list[int]:
    return prompt_ids(source.tokenizer(), None, message)


def reference_tokens(model: PreTrainedModel, ids: Sequence[int], new_tokens: int, eos: int | None) -> list[int]:
    """Greedy tokens from transformers' generate, without the final end-of-sequence token."""
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([list(ids)]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=new_tokens,
            do_sample=False,
        )
    tokens = output[0, len(ids) :].tolist()
    return tokens[:-1] if tokens and tokens[-1] == eos else tokens


@pytest.fixture(scope="session")
def random_hf_model(tmp_path_factory: pytest.TempPathFactory, default_source: GGUFModel) -> Path:
    """A small random Llama saved with transformers' save_pretrained (safetensors), untied head."""
    directory = tmp_path_factory.mktemp("random-llama")
    config = LlamaConfig(
        vocab_size=default_source.config.vocab_size,
        hidden_size=96,
        intermediate_size=256,
        num_hidden_layers=5,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        initializer_range=0.2,  # decisive logits, so greedy choices are not near-ties
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(1234)
    LlamaForCausalLM(config).save_pretrained(str(directory))
    default_source.tokenizer().save_pretrained(str(directory))
    return directory


def greedy_tokens(shard: Shard, prompts: dict[str, list[int]], new_tokens: int, together: bool) -> dict[str, list[int]]:
    """Greedy tokens of every session through `shard`: all in one pass per step, or each session
    on its own."""
    groups = [list(prompts)] if together else [[session] for session in prompts]
    tokens: dict[str, list[int]] = {session: [] for session in prompts}
    for group in groups:
        steps = [Step(session, 0, torch.tensor(prompts[session])) for session in group]
        for _ in range(new_tokens):
            outputs = shard.run_batch(steps)
            for session, output in zip(group, outputs, strict=True):
                assert isinstance(output, torch.Tensor)
                tokens[session].append(int(output.argmax()))
            steps = [
                Step(session, len(prompts[session]) + len(tokens[session]) - 1, torch.tensor(tokens[session][-1:]))
                for session in group
            ]
        for session in group:
            shard.close(session)
    return tokens
