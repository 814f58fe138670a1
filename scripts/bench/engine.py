"""Engine benchmark (`scripts/bench-engine`): prints tables side by side, asserts nothing.

Everything in one run on the same machine, interleaved over rounds and the best round kept, so
the ratios hold even on a noisy shared host: transformers' single-process generate, ours at 1-4
stages as threads and as processes, the per-hop cost of a hidden-state frame, memory per stage,
cold and cached load times; then every weight form (forms.py): speed against transformers,
memory, load times, top-1 agreement and perplexity against float32 (`--only-forms`: only those;
with `--device cuda` the forms and transformers run on that GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from aiohttp import web
from edgeshard.peer.model.files import GGUFModel, default_model_path, open_model
from edgeshard.peer.model.shard import Shard, even_split, unit_count
from edgeshard.peer.model.text import prompt_ids
from edgeshard.peer.pipeline.hidden import hidden_frame, hidden_tensor
from edgeshard.peer.pipeline.links import STAGE_PATH, Links, Reply, frame_endpoint
from edgeshard.peer.pipeline.local import LocalCluster
from edgeshard.peer.pipeline.servers import start_server
from edgeshard.peer.wire import Frame, Hidden, SamplingParams
from forms import form_list, forms_tables  # this folder is on the path: the script's own

PROMPT = "Write a short story about a robot who learns to paint."


def transformers_ms_per_token(model: Any, ids: list[int], tokens: int) -> tuple[float, list[int]]:
    """Decode ms/token of transformers' generate (prefill excluded: one-token run subtracted)."""
    inputs = torch.tensor([ids])
    mask = torch.ones_like(inputs)
    with torch.inference_mode():
        started = time.perf_counter()
        model.generate(inputs, attention_mask=mask, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        prefill = time.perf_counter() - started
        started = time.perf_counter()
        output = model.generate(
            inputs, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
        )
        total = time.perf_counter() - started
    return (total - prefill) * 1000 / (tokens - 1), output[0, len(ids) :].tolist()


async def ours_ms_per_token(
    source: GGUFModel, stages: int, processes: bool, ids: list[int], tokens: int
) -> tuple[float, list[int], list[dict[str, Any]]]:
    """Decode ms/token through real stage servers (time after the first token)."""
    ranges = even_split(unit_count(source.config), stages)
    async with LocalCluster("default", ranges, processes=processes, source=source) as cluster:
        out: list[int] = []
        first = time.perf_counter()
        async for token in cluster.origin.generate(cluster.route, ids, SamplingParams(), tokens):
            if not out:
                first = time.perf_counter()
            out.append(token)
        finished = time.perf_counter()
        return (finished - first) * 1000 / (len(out) - 1), out, await cluster.stage_status()


async def hop_microseconds(width: int, rounds: int = 2000) -> float:
    """One-way cost of a [1, width] float32 hidden frame: encode, WebSocket, decode (RTT / 2)."""
    replies: asyncio.Queue[Frame] = asyncio.Queue()

    async def echo(frame: Frame, reply: Reply) -> None:
        await reply(frame)

    async def back(frame: Frame, _reply: Reply) -> None:
        replies.put_nowait(frame)

    def mount(app: web.Application) -> None:
        app.router.add_get(STAGE_PATH, frame_endpoint(echo))

    runner, url = await start_server(mount)
    links = Links(on_frame=back)
    tensor = torch.randn(1, width)
    try:
        for _ in range(50):  # warm up
            await links.send(url, hidden_frame("s", 0, tensor, "float32"))
            await replies.get()
        started = time.perf_counter()
        for step in range(rounds):
            await links.send(url, hidden_frame("s", step, tensor, "float32"))
            frame = await replies.get()
            assert isinstance(frame, Hidden)
            hidden_tensor(frame)
        return (time.perf_counter() - started) / rounds / 2 * 1e6
    finally:
        await links.close()
        await runner.cleanup()


def load_seconds(cache_root: str) -> float:
    """Open the default model, its tokenizer, and every unit as one shard."""
    started = time.perf_counter()
    source = GGUFModel(default_model_path(), Path(cache_root))
    source.tokenizer()
    Shard(source, 0, unit_count(source.config))
    return time.perf_counter() - started


async def run(tokens: int, rounds: int, forms: str, only_forms: bool, device: str = "cpu") -> None:
    """Measure and print."""
    from transformers import AutoModelForCausalLM

    source = open_model("default")
    assert isinstance(source, GGUFModel)
    ids = prompt_ids(source.tokenizer(), None, PROMPT)
    path = default_model_path()
    started = time.perf_counter()
    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    reference_load = time.perf_counter() - started
    if device != "cpu":
        torch.nn.Module.to(reference, torch.device(device))  # the typed .to of a PreTrainedModel takes no device
    if not only_forms:
        await stages_tables(source, reference, reference_load, ids, tokens, rounds)
    if forms != "none":
        await forms_tables(reference, source, form_list(forms), tokens, rounds, device)


async def stages_tables(
    source: GGUFModel, reference: Any, reference_load: float, ids: list[int], tokens: int, rounds: int
) -> None:
    """The decode-speed, hop, memory and load tables of transformers and our 1-4 stages."""
    configurations = [(n, False) for n in (1, 2, 3, 4)] + [(n, True) for n in (1, 2, 3, 4)]
    best: dict[str, float] = {}
    statuses: dict[tuple[int, bool], list[dict[str, Any]]] = {}
    same = True
    for _ in range(rounds):
        ms, expected = transformers_ms_per_token(reference, ids, tokens)
        best["transformers"] = min(best.get("transformers", ms), ms)
        for stages, processes in configurations:
            ms, out, status = await ours_ms_per_token(source, stages, processes, ids, tokens)
            same &= out == expected[: len(out)]
            key = f"{stages} stage{'s' if stages > 1 else ''}, {'processes' if processes else 'threads'}"
            best[key] = min(best.get(key, ms), ms)
            statuses[(stages, processes)] = status
    base = best["transformers"]
    print(
        f"\n## Decode speed, default model, {tokens} tokens, best of {rounds} rounds "
        f"({torch.get_num_threads()} torch threads)\n"
    )
    print("| configuration | ms/token | tokens/s | token rate vs transformers |")
    print("|---|---:|---:|---:|")
    for key, ms in best.items():
        print(f"| {key} | {ms:.1f} | {1000 / ms:.1f} | {base / ms:.2f}× |")
    print(f"\ngreedy tokens identical to transformers in every run: {same}")
    hop = await hop_microseconds(source.config.hidden_size)
    print(
        f"\nper-hop cost of one hidden-state frame ({source.config.hidden_size} floats, "
        f"loopback WebSocket + msgpack): {hop:.0f} µs"
    )
    print("\n## Memory per stage (processes; RSS includes ~0.5 GB of torch and transformers)\n")
    print("| stages | stage | units | weights MB | RSS MB |")
    print("|---:|---:|---|---:|---:|")
    for stages in (1, 2, 3, 4):
        for index, stage in enumerate(statuses[(stages, True)]):
            print(
                f"| {stages} | {index} | [{stage['start']}, {stage['end']}) | "
                f"{stage['weight_bytes'] / 2**20:.0f} | {stage['rss_bytes'] / 2**20:.0f} |"
            )
    with tempfile.TemporaryDirectory() as cache_root:
        cold = load_seconds(cache_root)
        cached = load_seconds(cache_root)
    print(
        f"\nload, all units in one shard: cold {cold:.1f} s (dequantize, convert the tokenizer), cached {cached:.1f} s;"
    )
    print(f"transformers' own load of the same GGUF file (model only, no tokenizer): {reference_load:.1f} s")


def main() -> None:
    """Entry point of scripts/bench-engine."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only-forms", action="store_true", help="only the weight-forms and accuracy tables")
    parser.add_argument("--forms", default="", help="comma-separated weight forms (default: all; none: skip them)")
    parser.add_argument("--device", default="cpu", help="where the weight forms run: cpu, cuda, cuda:1, ...")
    args = parser.parse_args()
    if args.device != "cpu" and not args.only_forms:
        parser.error("--device other than cpu measures the weight forms only: add --only-forms")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    asyncio.run(run(args.tokens, args.rounds, args.forms, args.only_forms, args.device))


if __name__ == "__main__":
    main()
