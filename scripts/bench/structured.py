"""`scripts/bench-structured`: what constrained decoding and log-probabilities cost per token.

The embedded model, float32, the whole model in one in-process stage (sockets on loopback, as a
peer serves it), greedy. Each configuration decodes `--tokens` tokens per session with 1 and 8
sessions at once; the figure is the median time between a session's tokens (the origin's step
wall time, decode steps only). Configurations run interleaved, `--rounds` times, and each is
reported as a ratio to free sampling measured in the same rounds:
  free        no constraint, no log-probabilities
  logprobs    each token's log-probability and its 20 most likely alternatives
  json_schema an object of a string and an array of integers (llguidance's mask every token)
  tool_call   tool_choice "required" of one function taking that object (the Hermes syntax's
              grammar, as a request with tools gets it on the embedded model)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeshard.peer.api.toolcalls import tool_grammar
from edgeshard.peer.api.tools import parse_tool_use
from edgeshard.peer.model.files import open_model
from edgeshard.peer.model.grammar import json_grammar
from edgeshard.peer.model.shard import unit_count
from edgeshard.peer.model.text import chat_ids, stop_token_ids
from edgeshard.peer.pipeline.local import LocalCluster
from edgeshard.peer.pipeline.timing import StepTiming
from edgeshard.peer.wire import Constraint, SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {"notes": {"type": "string"}, "numbers": {"type": "array", "items": {"type": "integer"}}},
    "required": ["notes", "numbers"],
}
STOPS: list[int] = []
TOOL_USE = parse_tool_use(
    {"tools": [{"type": "function", "function": {"name": "note", "parameters": SCHEMA}}], "tool_choice": "required"}
)
PROMPT = "Write a long list of numbers with notes about each, as JSON."


async def one(cluster: LocalCluster, ids: list[int], sampling: SamplingParams, tokens: int) -> list[float]:
    """Decode-step wall times of one session."""
    timings: list[StepTiming] = []
    stops = STOPS
    async for _token in cluster.origin.generate(
        cluster.route, ids, sampling, tokens, stops, timings=timings, reuse=False
    ):
        pass
    return [t.wall_s for t in timings if not t.prefill]


async def measure(cluster: LocalCluster, ids: list[int], sampling: SamplingParams, tokens: int, sessions: int) -> float:
    runs = await asyncio.gather(*(one(cluster, ids, replace(sampling, seed=n), tokens) for n in range(sessions)))
    return statistics.median(gap for run in runs for gap in run)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    source = open_model("default")
    ids = chat_ids(source.tokenizer(), [{"role": "user", "content": PROMPT}])
    STOPS.extend(stop_token_ids(source.config))
    grammar = json_grammar(SCHEMA)
    configs = {
        "free": SamplingParams(),
        "logprobs": SamplingParams(logprobs=20),
        "json_schema": SamplingParams(constraint=Constraint(grammar)),
        "tool_call": SamplingParams(constraint=Constraint(tool_grammar(TOOL_USE, "hermes"))),
    }
    results: dict[str, Any] = {}
    async with LocalCluster("default", [(0, unit_count(source.config))], source=source, prefix_tokens=0) as cluster:
        await measure(cluster, ids, SamplingParams(), 8, 1)  # warm-up
        for sessions in (1, 8):
            gaps: dict[str, list[float]] = {name: [] for name in configs}
            for _round in range(args.rounds):
                for name, sampling in configs.items():
                    gaps[name].append(await measure(cluster, ids, sampling, args.tokens, sessions))
            free = statistics.median(gaps["free"])
            results[str(sessions)] = {
                name: {
                    "ms_per_token": round(statistics.median(g) * 1000, 2),
                    "vs_free": round(statistics.median(g) / free, 3),
                }
                for name, g in gaps.items()
            }
            print(f"  {sessions} session(s): {json.dumps(results[str(sessions)])}", file=sys.stderr)
    return results


def report(results: dict[str, Any]) -> str:
    lines = ["| sessions | configuration | ms between tokens | vs free sampling |", "|---:|---|---:|---:|"]
    for sessions, row in results.items():
        for name, figures in row.items():
            lines.append(f"| {sessions} | {name} | {figures['ms_per_token']:.2f} | {figures['vs_free']:.3f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=48, help="tokens each session decodes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
