"""`edgeshard generate`: run the model split over N local stage servers and generate text."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PeerError
from ..model.options import (
    COMPILE_CHOICES,
    COMPILE_HELP,
    DEFAULT_MODEL,
    KV_FORMS,
    WEIGHT_CHOICES,
    WEIGHTS_HELP,
    use_compile_mode,
)
from ..wire import SamplingParams

if TYPE_CHECKING:
    from ..model.files import ModelSource


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edgeshard generate`."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="'default' (SmolLM2-135M-Instruct), a .gguf file, or a HF model directory",
    )
    parser.add_argument("--stages", type=int, default=3, help="number of stage servers (units split evenly)")
    parser.add_argument("--plan", metavar="FILE", help="split by a plan from `edgeshard plan --json` instead")
    parser.add_argument("--processes", action="store_true", help="each stage in its own OS process")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--prompt", help="raw text to continue")
    text.add_argument("--chat", help="a user message, formatted with the model's chat template")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto", help=WEIGHTS_HELP)
    parser.add_argument("--compile", choices=COMPILE_CHOICES, help=COMPILE_HELP + " (default auto)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    parser.add_argument("--kv-cache", choices=KV_FORMS, default="float", help="KV cache: float or int8")
    parser.add_argument("--wire-dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")


def split_from_plan(path: str, units: int) -> list[tuple[int, int]]:
    """Unit ranges from a plan file (`edgeshard plan --json`)."""
    try:
        plan = json.loads(Path(path).read_text())
        ranges = [(int(s["start"]), int(s["end"])) for s in plan["stages"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PeerError(f"cannot read plan {path}: {error}") from error
    if (
        not ranges
        or ranges[0][0] != 0
        or ranges[-1][1] != units
        or any(a[1] != b[0] for a, b in itertools.pairwise(ranges))
    ):
        raise PeerError(f"plan {path} does not cover this model's {units} units contiguously")
    return ranges


async def run_generate(args: argparse.Namespace, source: ModelSource | None = None) -> dict[str, Any]:
    """Generate as the options say; streams text to stdout unless --json."""
    # The engine loads here, not when `edgeshard` parses its arguments.
    from ..model.devices import pick_device, resolve_form
    from ..model.files import open_model
    from ..model.shard import even_split, unit_count
    from ..model.text import TextStream, prompt_ids, stop_token_ids
    from ..pipeline.local import LocalCluster

    if args.compile:
        use_compile_mode(args.compile)
    source = source or open_model(args.model)
    tokenizer = source.tokenizer()
    units = unit_count(source.config)
    ranges = split_from_plan(args.plan, units) if args.plan else even_split(units, args.stages)
    ids = prompt_ids(tokenizer, args.prompt, args.chat)
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    stream = TextStream(tokenizer, args.stop)
    device = pick_device(args.device)
    async with LocalCluster(
        args.model,
        ranges,
        processes=args.processes,
        weights=resolve_form(args.weights, device),
        device=device,
        source=source,
        kv_cache=args.kv_cache,
    ) as cluster:
        started = time.perf_counter()
        first_at = started
        async for token in cluster.origin.generate(
            cluster.route, ids, sampling, args.max_tokens, stop_token_ids(source.config), wire_dtype=args.wire_dtype
        ):
            if not stream.tokens:
                first_at = time.perf_counter()
            new = stream.add(token)
            if not args.json:
                sys.stdout.write(new)
                sys.stdout.flush()
            if stream.stopped:
                break
        finished = time.perf_counter()
        statuses = await cluster.stage_status()
    tokens = stream.tokens
    if not args.json:
        print()
    return {
        "text": stream.text,
        "token_ids": tokens,
        "prompt_tokens": len(ids),
        "ttft_ms": (first_at - started) * 1000,
        "ms_per_token": (finished - first_at) * 1000 / (len(tokens) - 1) if len(tokens) > 1 else None,
        "stages": [
            {
                "start": s["start"],
                "end": s["end"],
                "rss_bytes": s["rss_bytes"],
                "weight_bytes": s["weight_bytes"],
            }
            for s in statuses
        ],
    }


def main(args: argparse.Namespace) -> int:
    """Run `edgeshard generate`."""
    result = asyncio.run(run_generate(args))
    if args.json:
        print(json.dumps(result))
    return 0
