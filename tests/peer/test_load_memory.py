"""A cold load fits: a real stage process's peak resident memory while it converts a GGUF file
stays within 1.25x of the bytes its weights hold, beyond the process's own base (measured by
scripts/bench/load_memory.py's probe: a fresh process, the kernel's peak-RSS mark reset after
its imports)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from edgeshard.peer.model.profile import Profile, load_headroom

from .quantized_files import Q, write_llama

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))
from load_memory import cost, run_probe

# A model of Llama-3.2-1B's layer shape, 6 layers: 360 M weights, about 230 MB as int4.
SHAPE = dict(hidden=2048, intermediate=8192, layers=6, heads=32, kv_heads=8, vocab=8192)
BOUND = 1.25


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("load-memory")
    return {
        "q4_k": write_llama(work / "q4_k.gguf", Q.Q4_K, Q.Q6_K, shape=SHAPE),
        "q8_0": write_llama(work / "q8_0.gguf", Q.Q8_0, Q.Q8_0, shape=SHAPE),
    }


@pytest.mark.parametrize(
    ("file", "start", "end", "form"),
    [("q4_k", 0, 8, "int4"), ("q4_k", 2, 5, "int4"), ("q8_0", 0, 8, "int8"), ("q8_0", 0, 8, "int4")],
)
def test_a_cold_load_peaks_within_a_quarter_over_what_it_holds(
    files: dict[str, Path], tmp_path: Path, file: str, start: int, end: int, form: str
) -> None:
    cold = run_probe(files[file], start, end, form, tmp_path)
    assert cost(cold) <= BOUND, cold
    # What the plan counts for this stage (its weights, and the headroom the peer keeps back
    # from its budget for a first load) covers the load's peak.
    profile = Profile((), (), "cpu", "float32", 1, 1.0, form=form, weight_bytes=(0, cold["layer"], 0))  # type: ignore[arg-type]
    assert cold["peak"] - cold["base"] <= cold["held"] + load_headroom([profile]), cold
    cached = run_probe(files[file], start, end, form, tmp_path)
    assert cached["held"] == cold["held"] and cost(cached) <= BOUND, cached
