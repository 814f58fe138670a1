"""What a stage holds against what its load takes: peak resident memory of real stage loads.

  python scripts/bench/load_memory.py [--files embedded,1b-q4_0,1b-q4_k_m,1b-q8_0,8b-q4_k_m]
                                      [--stages 1,3] [--work DIR]
  python scripts/bench/load_memory.py probe MODEL START END FORM      (one load, JSON out)

Each load runs in a fresh process (`probe`): after its imports (and one layer loaded from a
throwaway cache, so the base holds what a load first imports) it resets the kernel's peak-RSS
mark (/proc/self/clear_refs), notes its resident memory as the base, loads units [START, END)
in FORM (max_sessions 1, a 256-token context, so the KV pool stays small) and prints base,
peak (VmHWM), resident after, and the bytes its weights hold. The table mode makes the
llama.cpp benchmark's files (scripts/bench/llamacpp.py; llama.cpp's quantizer needs
llama-cpp-python) and, per file and form, loads 1 and 3 stages cold (an empty cache) and again
from the cache; a stage's load cost is (peak − base) / held, the goal ≤ 1.25.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MiB = 1 << 20


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def probe(model: str, start: int, end: int, form: str) -> dict[str, Any]:
    """One load in this process (the child's side)."""
    import time

    import torch  # noqa: F401  (the base includes torch and transformers)
    from edgeshard.peer.model.files import open_model
    from edgeshard.peer.model.shard import Shard

    source = open_model(model)
    _ = source.config, source.fingerprint
    # The base is a stage process's own code: torch, transformers and what a load first imports
    # (the compiler's modules among them), warmed by one layer loaded from a throwaway cache.
    with tempfile.TemporaryDirectory() as scratch:
        warm = Shard(open_model(model, Path(scratch)), 1, 2, weights=form, max_sessions=1, max_context=16)  # type: ignore[arg-type]
        del warm
    # The base keeps the heap the warm-up freed (as a running stage process keeps its own), and
    # a load may reuse it: with it returned first (malloc_trim) a 3-layer 1B-shaped stage
    # measured 1.35-1.38 where this measures about 1.2, whole 1B-shaped models 1.12-1.16.
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status("VmRSS")
    started = time.perf_counter()
    shard = Shard(source, start, end, weights=form, max_sessions=1, max_context=256)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    return {
        "base": base,
        "peak": _status("VmHWM"),
        "after": _status("VmRSS"),
        "held": shard.weight_bytes(),
        "layer": max((_module_bytes(layer) for layer in shard.layers), default=0),
        "seconds": round(seconds, 2),
    }


def _module_bytes(module: Any) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def run_probe(model: Path | str, start: int, end: int, form: str, cache: Path) -> dict[str, Any]:
    """A probe in a fresh process with `cache` as its EDGESHARD_CACHE."""
    environment = {**os.environ, "EDGESHARD_CACHE": str(cache)}
    command = [sys.executable, __file__, "probe", str(model), str(start), str(end), form]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"probe {command[3:]} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def cost(result: dict[str, Any]) -> float:
    """A load's memory beyond the base, per byte held."""
    return float(result["peak"] - result["base"]) / max(1, int(result["held"]))


def table(names: list[str], stage_counts: list[int], work: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from edgeshard.peer.model.files import open_model
    from edgeshard.peer.model.shard import even_split, unit_count
    from llamacpp import files

    made = files(work, names)
    print(
        "| file | file MB | form | stages | held MB (÷ file) | cold: peak RSS MB, worst stage "
        "| cold: (peak − base) ÷ held | cached: peak RSS MB | cached: (peak − base) ÷ held |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, path in made.items():
        forms = ["int4", "int8"] if name.endswith("q8_0") else ["int4"]
        units = unit_count(open_model(str(path)).config)
        size = path.stat().st_size
        for form in forms:
            for stages in stage_counts:
                with tempfile.TemporaryDirectory(prefix="edgeshard-load-") as cache:
                    ranges = even_split(units, stages)
                    cold = [run_probe(path, a, b, form, Path(cache)) for a, b in ranges]
                    cached = [run_probe(path, a, b, form, Path(cache)) for a, b in ranges]
                held = sum(r["held"] for r in cold)
                worst, worst_cached = max(cold, key=cost), max(cached, key=cost)
                print(
                    f"| {name} | {size / MiB:.1f} | {form} | {stages} | {held / MiB:.1f} ({held / size:.2f}) "
                    f"| {max(r['peak'] for r in cold) / MiB:.0f} "
                    f"| {cost(worst):.2f} ({(worst['peak'] - worst['base']) / MiB:.0f} MB for "
                    f"{worst['held'] / MiB:.0f} MB, base {worst['base'] / MiB:.0f}) "
                    f"| {max(r['peak'] for r in cached) / MiB:.0f} | {cost(worst_cached):.2f} |",
                    flush=True,
                )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "probe":
        model, start, end, form = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        print(json.dumps(probe(model, start, end, form)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", default="embedded,1b-q4_0,1b-q4_k_m,1b-q8_0")
    parser.add_argument("--stages", default="1,3")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeshard-bench-llamacpp")
    args = parser.parse_args()
    table(args.files.split(","), [int(n) for n in args.stages.split(",")], args.work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
