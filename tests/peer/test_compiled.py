"""The compiled step (torch.compile of each layer's dense parts) gives the tokens the eager one
gives, batched or not, in one process or many; it compiles once per restart at most, and a
compile that fails leaves the stage running eagerly."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from edgeshard.peer.model import compiled
from edgeshard.peer.model.files import GGUFModel, ModelSource
from edgeshard.peer.model.options import WeightForm
from edgeshard.peer.model.shard import Shard, Step, even_split, unit_count
from edgeshard.peer.pipeline.local import LocalCluster
from edgeshard.peer.wire import SamplingParams

from tests.engine_fixtures import NEW_TOKENS, PROMPTS, chat_ids, greedy_tokens, reference_tokens


def test_the_mode_decides_where_a_step_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    assert compiled.compiles("on", "float32", "cuda")
    assert not compiled.compiles("off", "int4", "cpu")
    monkeypatch.setattr(compiled, "compiler", lambda: "/usr/bin/g++")
    assert compiled.compiles("auto", "int4", "cpu")
    assert not compiled.compiles("auto", "float32", "cpu")  # measured no faster
    assert not compiled.compiles("auto", "bfloat16", "cuda")
    monkeypatch.setattr(compiled, "compiler", lambda: None)
    assert not compiled.compiles("auto", "int4", "cpu")  # no C++ compiler: eager
    monkeypatch.setenv("EDGESHARD_COMPILE", "sometimes")
    with pytest.raises(ValueError, match="EDGESHARD_COMPILE"):
        compiled.process_mode()
    monkeypatch.setenv("EDGESHARD_COMPILE", "on")
    assert compiled.process_mode() == "on"


async def _generate(source: ModelSource, stages: int, ids: list[int], processes: bool = False) -> list[int]:
    ranges = even_split(unit_count(source.config), stages)
    async with LocalCluster("default", ranges, processes=processes, source=source) as cluster:
        eos = [source.config.eos_token_id]
        return [t async for t in cluster.origin.generate(cluster.route, ids, SamplingParams(), NEW_TOKENS, eos)]


@pytest.fixture(scope="module")
def references(default_source: GGUFModel, reference_model: object) -> dict[str, list[int]]:
    eos = default_source.config.eos_token_id
    return {p: reference_tokens(reference_model, chat_ids(default_source, p), NEW_TOKENS, eos) for p in PROMPTS[:2]}  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("stages", [1, 3])
def test_compiled_split_matches_transformers(
    stages: int, default_source: GGUFModel, references: dict[str, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESHARD_COMPILE", "on")
    for prompt, expected in references.items():
        assert asyncio.run(_generate(default_source, stages, chat_ids(default_source, prompt))) == expected


@pytest.mark.slow
def test_compiled_stage_processes_match_transformers(
    default_source: GGUFModel, references: dict[str, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESHARD_COMPILE", "on")  # the stage processes inherit it
    prompt = PROMPTS[0]
    ours = asyncio.run(_generate(default_source, 2, chat_ids(default_source, prompt), processes=True))
    assert ours == references[prompt]


def _forced_agreement(shard: Shard, prompts: dict[str, list[int]], tokens: dict[str, list[int]]) -> float:
    """The share of steps where the shard's top token is `tokens`' own, every session in one pass
    per step, each fed `tokens` (teacher forcing: one differing step does not change the rest)."""
    steps = [Step(session, 0, torch.tensor(ids)) for session, ids in prompts.items()]
    same = total = 0
    for index in range(len(next(iter(tokens.values())))):
        outputs = shard.run_batch(steps)
        for session, output in zip(prompts, outputs, strict=True):
            assert isinstance(output, torch.Tensor)
            same += int(output.argmax()) == tokens[session][index]
            total += 1
        steps = [Step(s, len(prompts[s]) + index, torch.tensor([tokens[s][index]])) for s in prompts]
    for session in prompts:
        shard.close(session)
    return same / total


@pytest.mark.slow
@pytest.mark.parametrize("form", ["float32", "int4"])
def test_batched_unbatched_compiled_and_eager_give_the_same_tokens(form: WeightForm, default_source: GGUFModel) -> None:
    """float32: the same tokens on all four paths. int4 rounds every layer's input to bfloat16, so
    a one-ulp difference between inductor's fused loops and ATen's (silu, the norms' sums, seen
    from 64 rows up), or the kernel's at another row count, can move a rounding and, rarely, a
    near-tied top token: there the eager and compiled
    paths of one session agree exactly, and a batch, eager or compiled, agrees with them step by
    step (teacher-forced) as closely as two int4 runs can."""
    prompts = {f"s{i}": chat_ids(default_source, prompt) for i, prompt in enumerate(PROMPTS)}
    total = unit_count(default_source.config)
    eager = Shard(default_source, 0, total, weights=form, compile_step=False)
    fused = Shard(default_source, 0, total, weights=form, compile_step=True)
    assert fused.parts.compiled and not eager.parts.compiled
    expected = greedy_tokens(eager, prompts, 32, together=False)
    assert all(len(tokens) == 32 for tokens in expected.values())
    if form == "float32":
        assert greedy_tokens(eager, prompts, 32, together=True) == expected
        assert greedy_tokens(fused, prompts, 32, together=False) == expected
        assert greedy_tokens(fused, prompts, 32, together=True) == expected
    else:
        # On an AVX-512 CPU an eager batch and a compiled single session each moved a near-tied
        # token (so did the code before the chunked loads, checked at 1cf7485; the exact match
        # was seen on AVX2): int4 is held to step-by-step agreement.
        assert _forced_agreement(eager, prompts, expected) >= 0.95
        assert _forced_agreement(fused, prompts, expected) >= 0.95


# Runs in a fresh process: a compiled shard of a small random model, its outputs and inductor's
# cache counters as JSON. (A process's first compile of a graph is what a restart would repeat.)
_ONE_RUN = """
import json, sys, torch
from torch._dynamo.utils import counters
from edgeshard.peer.model.files import open_model
from edgeshard.peer.model.shard import Shard, unit_count
source = open_model(sys.argv[1])
outputs = []
for compile_step in (True, False):
    shard = Shard(source, 0, unit_count(source.config), compile_step=compile_step)
    logits = [shard.run("s", 0, torch.tensor([5, 6, 7, 8]))]
    logits.append(shard.run("s", 4, torch.tensor([int(logits[-1].argmax())])))
    outputs.append([l.tolist() for l in logits])
print(json.dumps({"compiled": outputs[0], "eager": outputs[1], **counters["inductor"]}))
"""


def _one_run(model: Path, cache: Path, **environment: str) -> tuple[dict[str, object], str]:
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env |= {"EDGESHARD_CACHE": str(cache), **environment}
    done = subprocess.run(
        [sys.executable, "-c", _ONE_RUN, str(model)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result, done.stderr


def _close(a: object, b: object) -> bool:
    return bool(torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4))


@pytest.mark.slow
def test_a_restart_loads_the_compiled_step_from_the_cache(random_hf_model: Path, tmp_path: Path) -> None:
    first, _ = _one_run(random_hf_model, tmp_path)
    assert _close(first["compiled"], first["eager"])
    assert first.get("fxgraph_cache_miss", 0) > 0 and first.get("fxgraph_cache_hit", 0) == 0  # type: ignore[operator]
    assert any((tmp_path / "inductor").iterdir())  # in EdgeShard's cache, not the system's temp
    second, _ = _one_run(random_hf_model, tmp_path)
    assert second.get("fxgraph_cache_hit", 0) > 0 and second.get("fxgraph_cache_miss", 0) == 0  # type: ignore[operator]
    assert second["compiled"] == first["compiled"]


@pytest.mark.slow
def test_a_compile_that_fails_leaves_the_stage_running_eagerly(random_hf_model: Path, tmp_path: Path) -> None:
    result, log = _one_run(random_hf_model, tmp_path, CXX=str(tmp_path / "no-such-compiler"))
    assert "running it eagerly" in log
    assert result["compiled"] == result["eager"]
