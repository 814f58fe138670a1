"""`edgeshard perplexity`: scored as llama-perplexity scores a text (second half of each chunk,
BOS first), every token's log-probability equal to transformers' own model on the same chunk,
the same over 1 and 3 chained stages, and the command's JSON as a user reads it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.model.perplexity import chunk_starts, perplexity
from edgeshard.peer.model.shard import Shard, even_split, unit_count
from transformers import PreTrainedModel

TEXT = (
    "The history of the bicycle began in the early nineteenth century. Early designs had no pedals; riders "
    "pushed along the ground with their feet. Later, cranks were fitted to the front wheel, and by the 1880s "
    "the safety bicycle, with two wheels of equal size and a chain drive to the rear wheel, had appeared. It "
    "made cycling popular with many people, and women in particular found new freedom of movement. "
) * 2
CONTEXT = 64


def test_chunks_are_whole_and_a_short_rest_is_dropped() -> None:
    assert chunk_starts(130, 64) == [0, 64]
    assert chunk_starts(63, 64) == []
    with pytest.raises(ValueError):
        chunk_starts(100, 2)


def shards(source: GGUFModel, stages: int) -> list[Shard]:
    ranges = even_split(unit_count(source.config), stages)
    return [Shard(source, a, b, max_sessions=1, max_context=CONTEXT) for a, b in ranges]


def test_every_scored_token_has_transformers_log_probability(
    default_source: GGUFModel, reference_model: PreTrainedModel
) -> None:
    ids = default_source.tokenizer().encode(TEXT)
    bos = int(default_source.config.bos_token_id)
    scored = perplexity(shards(default_source, 1), ids, CONTEXT, bos)
    starts = chunk_starts(len(ids), CONTEXT)
    assert scored.chunks == len(starts) >= 2 and scored.scored == len(starts) * (CONTEXT // 2 - 1)
    values = [p for p in scored.logprobs if p is not None]
    assert math.isclose(scored.perplexity, math.exp(-sum(values) / len(values)))
    for start in starts:
        chunk = [bos, *ids[start + 1 : start + CONTEXT]]
        with torch.inference_mode():
            logits = reference_model(torch.tensor([chunk])).logits[0].double()
        expected = torch.log_softmax(logits, -1)[torch.arange(CONTEXT - 1), torch.tensor(chunk[1:])]
        for j in range(CONTEXT // 2, CONTEXT - 1):  # the second half only, as llama-perplexity
            got = scored.logprobs[start + j + 1]
            assert got is not None and abs(got - float(expected[j])) < 1e-3, (start, j)
        assert all(p is None for p in scored.logprobs[start : start + CONTEXT // 2 + 1])
    three = perplexity(shards(default_source, 3), ids, CONTEXT, bos)
    assert math.isclose(three.perplexity, scored.perplexity, rel_tol=1e-4)


@pytest.mark.slow
def test_the_command_prints_the_perplexity_and_every_logprob(tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    command = [sys.executable, "-m", "edgeshard.peer.cli", "perplexity", "--text-file", str(text)]
    done = subprocess.run(
        [*command, "--context", str(CONTEXT), "--weights", "int4", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["weights"] == "int4" and result["chunks"] >= 2
    assert len(result["logprobs"]) == len(result["token_ids"])
    values = [p for p in result["logprobs"] if p is not None]
    assert len(values) == result["scored"] and all(p <= 0 for p in values)
    assert math.isclose(result["perplexity"], math.exp(-sum(values) / len(values)), rel_tol=1e-9)
    plain = subprocess.run([*command, "--context", str(CONTEXT)], capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0 and plain.stdout.startswith("perplexity "), plain.stderr
    missing = subprocess.run([*command[:-1], str(tmp_path / "none.txt")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    short = subprocess.run([*command, "--context", "100000"], capture_output=True, text=True, timeout=600)
    assert short.returncode == 2 and "fewer than one chunk" in short.stderr
