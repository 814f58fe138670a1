"""`scripts/bench-llamacpp`: EdgeShard against llama.cpp on this device, on the same GGUF files.

  scripts/bench-llamacpp [--files embedded,1b-q4_0,1b-q4_k_m,1b-q8_0,8b-q4_k_m] [--runs 5] [--tokens 64]
                         [--compile auto|on|off]

llama.cpp is a benchmark-only dependency: `pip install llama-cpp-python==0.3.36` into the venv
(it builds llama.cpp from source, about 15 minutes here) and, for the concurrent-chats row, a
`llama-server` binary (`--llama-server PATH`: built from llama-cpp-python's vendored sources
with `cmake --build build --target llama-server`); without it that row is skipped and says so.

Files: the embedded SmolLM2-135M Q4_1 file as shipped, and random models of Llama-3.2-1B's
shape (`1b-*`: hidden 2048, 16 layers, MLP 8192, 32 heads, 8 KV heads) and of Llama-3.1-8B's
(`8b-*`: hidden 4096, 32 layers, MLP 14336, 32 heads, 8 KV heads), each with a tied head and
the embedded file's tokenizer (so vocabulary 49152), written here as F16 with gguf's writer
(a tensor at a time) and quantized by llama.cpp's own quantizer (`llama_model_quantize`) to
Q4_0, Q4_K_M or Q8_0 (the name's suffix), into --work.

Rows, each ours beside llama.cpp's in the same run, with the ratio (> 1: ours is faster):
  decode, 1 session     ms/token after the first token, greedy, one stage (`edgeshard generate
                        --stages 1`'s path: a real stage server and origin on loopback);
                        RUNS runs interleaved, best and worst/best
  prefill, 512 tokens   tokens/s of a 512-token prompt to its first token
  8 chats, one API      aggregate completion tokens/s of 8 concurrent chat completions through
                        one edgeshard-peer's API and through `llama-server --parallel 8`, from
                        the same client
  3 stage processes     decode ms/token of 3 stage processes over one stage's (ours only)
Threads: both use this machine's cores (llama.cpp n_threads = torch's threads).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from edgeshard.peer.model.files import GGUFModel, default_model_path, open_model
from edgeshard.peer.model.options import COMPILE_CHOICES, COMPILE_ENVIRONMENT, WeightForm
from edgeshard.peer.model.shard import even_split, unit_count
from edgeshard.peer.pipeline.local import LocalCluster
from edgeshard.peer.wire import SamplingParams

ONE_B = {"block_count": 16, "embedding_length": 2048, "feed_forward_length": 8192, "head_count": 32, "head_count_kv": 8}
EIGHT_B = {
    "block_count": 32,
    "embedding_length": 4096,
    "feed_forward_length": 14336,
    "head_count": 32,
    "head_count_kv": 8,
}
SHAPES = {"1b": ONE_B, "8b": EIGHT_B}  # Llama-3.2-1B's and Llama-3.1-8B's shapes
QUANTS = {"q4_0": 2, "q8_0": 7, "q4_k_m": 15}  # llama_ftype values
CHATS = 8
PROMPT_TOKENS = 512
DECODE_PROMPT_TOKENS = 16  # the prompt before a decode measurement


# --- files -------------------------------------------------------------------------------------


def write_shape(target: Path, shape: dict[str, int], seed: int = 0) -> None:
    """A random Llama of `shape`, F16, with the embedded file's tokenizer fields. Tensors are made
    and written one at a time (an 8B-shaped file is 14 GB: it must not be held in memory)."""
    reader = gguf.GGUFReader(str(default_model_path()))
    writer = gguf.GGUFWriter(str(target), arch="llama")
    for field in reader.fields.values():
        name = field.name
        if name == gguf.Keys.General.ARCHITECTURE or name.startswith("GGUF.") or name.startswith("llama."):
            continue
        if name == "general.file_type":
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), value_type, sub_type=sub_type)
    hidden, ffn, heads, kv = (
        shape[k] for k in ("embedding_length", "feed_forward_length", "head_count", "head_count_kv")
    )
    dim = hidden // heads
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    writer.add_context_length(8192)
    writer.add_embedding_length(hidden)
    writer.add_block_count(shape["block_count"])
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_dimension_count(dim)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    rng = np.random.default_rng(seed)

    def matrix(rows: int, columns: int) -> np.ndarray:
        return (rng.standard_normal((rows, columns), dtype=np.float32) * 0.02).astype(np.float16)

    tensors: list[tuple[str, tuple[int, ...], type]] = [("token_embd.weight", (vocab, hidden), np.float16)]
    tensors.append(("output_norm.weight", (hidden,), np.float32))
    for block in range(shape["block_count"]):
        for name, rows, columns in (
            ("attn_q", hidden, hidden),
            ("attn_k", kv * dim, hidden),
            ("attn_v", kv * dim, hidden),
            ("attn_output", hidden, hidden),
            ("ffn_gate", ffn, hidden),
            ("ffn_up", ffn, hidden),
            ("ffn_down", hidden, ffn),
        ):
            tensors.append((f"blk.{block}.{name}.weight", (rows, columns), np.float16))
        for norm in ("attn_norm", "ffn_norm"):
            tensors.append((f"blk.{block}.{norm}.weight", (hidden,), np.float32))
    for name, dims, dtype in tensors:
        size = int(np.prod(dims)) * np.dtype(dtype).itemsize
        writer.add_tensor_info(name, dims, np.dtype(dtype), size)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _name, dims, _dtype in tensors:
        writer.write_tensor_data(matrix(*dims) if len(dims) == 2 else np.ones(dims, dtype=np.float32))
    writer.close()


def quantize(source: Path, target: Path, kind: str) -> None:
    """llama.cpp's own quantizer, as `llama-quantize` runs it."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTS[kind]
    params.nthread = torch.get_num_threads()
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0:
        raise RuntimeError(f"llama_model_quantize {kind}: status {status}")


def files(work: Path, names: list[str]) -> dict[str, Path]:
    """The benchmark's files by name, made in `work` when missing."""
    work.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    for name in names:
        if name == "embedded":
            made[name] = default_model_path()
            continue
        size, _dash, kind = name.partition("-")
        f16 = work / f"llama-{size}-shape-f16.gguf"
        target = work / f"llama-{size}-shape-{kind}.gguf"
        if not target.exists():
            if not f16.exists():
                print(f"writing {f16} ...", file=sys.stderr)
                write_shape(f16, SHAPES[size])
            print(f"quantizing {target.name} ...", file=sys.stderr)
            quantize(f16, target, kind)
        made[name] = target
    return made


def form_for(name: str) -> WeightForm:
    """The form a user would hold the file in: int8 for an 8-bit file, int4 for a 4-bit one."""
    return "int8" if name.endswith("q8_0") else "int4"


# --- ours --------------------------------------------------------------------------------------


async def ours_generate(
    source: GGUFModel, form: WeightForm, stages: int, processes: bool, ids: list[int], tokens: int, runs: int
) -> list[tuple[float, float]]:
    """(first-token seconds, decode ms/token) of `runs` greedy generations, one cluster."""
    ranges = even_split(unit_count(source.config), stages)
    model = str(source.path)
    results = []
    async with LocalCluster(model, ranges, processes=processes, weights=form, source=source) as cluster:
        for _ in range(runs + 1):  # the first warms up
            started = time.perf_counter()
            first, count = started, 0
            async for _token in cluster.origin.generate(cluster.route, ids, SamplingParams(), tokens, stop_ids=()):
                if count == 0:
                    first = time.perf_counter()
                count += 1
            finished = time.perf_counter()
            results.append((first - started, (finished - first) * 1000 / max(count - 1, 1)))
    return results[1:]


# --- llama.cpp ---------------------------------------------------------------------------------


def llama_runs(path: Path, ids: list[int], tokens: int, runs: int) -> list[tuple[float, float]]:
    """(first-token seconds, decode ms/token) of `runs` greedy generations with llama-cpp-python."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=2048, n_batch=512, n_threads=torch.get_num_threads(), verbose=False)
    vocab = llm.n_vocab()

    def greedy() -> int:  # the last position's logits (llm.scores is filled only with logits_all)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
        return int(np.argmax(logits))

    results = []
    for _ in range(runs + 1):
        llm.reset()
        started = time.perf_counter()
        llm.eval(ids)
        token = greedy()
        first = time.perf_counter()
        for _step in range(tokens - 1):
            llm.eval([token])
            token = greedy()
        finished = time.perf_counter()
        results.append((first - started, (finished - first) * 1000 / (tokens - 1)))
    llm.close()
    return results[1:]


# --- one measurement, in a process of its own ---------------------------------------------------

Runs = list[tuple[float, float]]


def prompt_ids(vocab: int, length: int) -> list[int]:
    """The same random prompt for both engines."""
    return torch.randint(100, vocab, (length,), generator=torch.Generator().manual_seed(1)).tolist()


def measure_here(spec: dict[str, Any]) -> Runs:
    path = Path(spec["path"])
    source = open_model(str(path))
    assert isinstance(source, GGUFModel)
    ids = prompt_ids(int(source.config.vocab_size), spec["prompt"])
    if spec["engine"] == "llama.cpp":
        return llama_runs(path, ids, spec["tokens"], spec["runs"])
    return asyncio.run(
        ours_generate(source, spec["form"], spec["stages"], spec["processes"], ids, spec["tokens"], spec["runs"])
    )


def measure_apart(
    engine: str,
    *,
    path: Path,
    form: WeightForm,
    prompt: int,
    tokens: int,
    runs: int,
    stages: int = 1,
    processes: bool = False,
) -> Runs:
    """A measurement in a fresh process, as a user's run is: two OpenMP runtimes (torch's and
    llama.cpp's) in one process slowed both, and what ran before must not warm or cool the next."""
    spec = {"engine": engine, "path": str(path), "form": form, "prompt": prompt, "tokens": tokens}
    spec |= {"runs": runs, "stages": stages, "processes": processes}
    done = subprocess.run(
        [sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{engine} measurement failed:\n{done.stderr[-3000:]}")
    return [(float(a), float(b)) for a, b in json.loads(done.stdout.strip().splitlines()[-1])]


# --- 8 chats through an API --------------------------------------------------------------------


def served_model(api: str) -> str:
    with urllib.request.urlopen(f"{api}/v1/models", timeout=30) as response:
        return str(json.loads(response.read())["data"][0]["id"])


def chat(api: str, index: int, tokens: int, counts: list[int], model: str) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Tell me a long story about place number {index}."}],
        "max_tokens": tokens,
        "temperature": 0.0,
    }
    request = urllib.request.Request(
        f"{api}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=900) as response:
        counts.append(int(json.loads(response.read())["usage"]["completion_tokens"]))


def concurrent_tps(api: str, tokens: int) -> float:
    """Aggregate completion tokens/s of CHATS concurrent chats (after one warm-up chat)."""
    model = served_model(api)
    chat(api, 99, 4, [], model)
    counts: list[int] = []
    threads = [threading.Thread(target=chat, args=(api, i, tokens, counts, model)) for i in range(CHATS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def wait_http(url: str, timeout_s: float = 900.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1.0)
    raise RuntimeError(f"{url} did not answer in {timeout_s} s")


def ours_chats(path: Path, form: WeightForm, tokens: int, port: int) -> float:
    from edgeshard.peer.cli.cluster import start_peers, stop_peers, wait_ready

    logs = Path(tempfile.mkdtemp(prefix="bench-llamacpp-peer-"))
    args = argparse.Namespace(
        peers=1,
        model=str(path),
        max_memory=None,
        context=1024,
        sessions=CHATS,
        objective="throughput",
        base_port=port,
        weights=form,
    )
    peers = start_peers(args, logs)
    try:
        wait_ready(peers, logs, quiet=True)
        return concurrent_tps(peers[0].api, tokens)
    finally:
        stop_peers(peers)


def llama_server_chats(binary: Path, path: Path, tokens: int, port: int) -> float:
    command = [str(binary), "-m", str(path), "--port", str(port), "--host", "127.0.0.1", "--parallel", str(CHATS)]
    command += ["-c", str(CHATS * 1024), "-t", str(torch.get_num_threads()), "--no-webui"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        return concurrent_tps(f"http://127.0.0.1:{port}", tokens)
    finally:
        server.terminate()
        server.wait(30)


# --- the table ---------------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    return f"{min(values):.1f} (worst/best {max(values) / min(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", default="embedded,1b-q4_0,1b-q4_k_m,1b-q8_0")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "edgeshard-bench-llamacpp"))
    parser.add_argument("--llama-server", default=shutil.which("llama-server") or "", help="llama-server binary")
    parser.add_argument("--skip", default="", help="rows to leave out: chats,stages")
    parser.add_argument("--port", type=int, default=18620)
    parser.add_argument(
        "--compile", choices=COMPILE_CHOICES, help="our stages' --compile (default: the product's, auto)"
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one measurement (JSON spec), in a child
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_here(json.loads(args.measure))))
        return 0
    skip = set(filter(None, args.skip.split(",")))
    if args.compile:  # to our stages in this process's children and to the peer of the chats row
        os.environ[COMPILE_ENVIRONMENT] = os.environ["EDGESHARD_PEER_COMPILE"] = args.compile
    made = files(Path(args.work), args.files.split(","))
    rows: list[tuple[str, str, str, str, str]] = []

    def row(file: str, what: str, ours: float, theirs: float | None, unit: str, higher_is_better: bool) -> None:
        ratio = "" if theirs is None else f"{(ours / theirs if higher_is_better else theirs / ours):.2f}×"
        rows.append((file, what, f"{ours:.1f} {unit}", "" if theirs is None else f"{theirs:.1f} {unit}", ratio))
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)

    for name, path in made.items():
        form = form_for(name)
        label = f"{name} ({form})"

        runs_of = partial(measure_apart, path=path, form=form)
        decode_runs = partial(runs_of, prompt=DECODE_PROMPT_TOKENS, tokens=args.tokens)

        ours_decode: list[float] = []
        theirs_decode: list[float] = []
        for _ in range(args.runs):  # interleaved: a slow minute of this machine hits both
            ours_decode += [ms for _s, ms in decode_runs("ours", runs=1)]
            theirs_decode += [ms for _s, ms in decode_runs("llama.cpp", runs=1)]
        print(f"{label} decode ms: ours {ours_decode} llama.cpp {theirs_decode}", file=sys.stderr)
        rows.append(
            (
                label,
                "decode, 1 session, ms/token",
                spread(ours_decode),
                spread(theirs_decode),
                f"{min(theirs_decode) / min(ours_decode):.2f}×",
            )
        )
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
        ours_prefill = min(s for s, _ms in runs_of("ours", prompt=PROMPT_TOKENS, tokens=2, runs=2))
        theirs_prefill = min(s for s, _ms in runs_of("llama.cpp", prompt=PROMPT_TOKENS, tokens=2, runs=2))
        row(
            label,
            f"prefill, {PROMPT_TOKENS} tokens, tokens/s",
            PROMPT_TOKENS / ours_prefill,
            PROMPT_TOKENS / theirs_prefill,
            "tok/s",
            True,
        )
        if "chats" not in skip:
            ours_tps = ours_chats(path, form, args.tokens, args.port)
            binary = Path(args.llama_server) if args.llama_server else None
            theirs_tps = llama_server_chats(binary, path, args.tokens, args.port + 50) if binary else None
            row(label, f"{CHATS} chats through one API, tokens/s", ours_tps, theirs_tps, "tok/s", True)
        if "stages" not in skip:
            one = min(ms for _s, ms in decode_runs("ours", runs=2, stages=1, processes=True))
            three = min(ms for _s, ms in decode_runs("ours", runs=2, stages=3, processes=True))
            rows.append(
                (
                    label,
                    "3 stage processes vs 1, decode ms/token",
                    f"{three:.1f} vs {one:.1f}",
                    "",
                    f"{one / three:.2f}×",
                )
            )
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {capability}")
    print("| file (our form) | row | EdgeShard | llama.cpp | ours vs llama.cpp |")
    print("|---|---|---:|---:|---:|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
