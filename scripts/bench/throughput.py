"""`scripts/bench-throughput`: many users at once, side by side with transformers, in one run.

Rows, all on this machine in one run (speeds are only comparable within it):
  transformers, 1 session          the baseline: greedy decode of one prompt
  transformers generate, batch 8   transformers' own batched generate: the ceiling here
  edgeshard latency plan, 1        a local cluster of 3 edgeshard-peer processes, latency plan
  edgeshard throughput plan, N     the same peers on the throughput plan, N concurrent streamed
                                   chat completions through the OpenAI-compatible API
For each: aggregate tokens/s, its ratio to one session of the same system, time to first token,
p50/p95 time between tokens, and (ours) the tokens/s the planner predicts for N sessions in step
from the measured costs (`/v1/status` → api.predicted_tps while the N generate).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from edgeshard.peer.api.client import get_status, stream_chunks
from edgeshard.peer.cli.cluster import LocalPeer, start_peers, stop_peers, wait_ready
from edgeshard.peer.model.files import default_model_path, open_model
from edgeshard.peer.model.text import prompt_ids
from transformers import AutoModelForCausalLM

TOPICS = ["a dragon", "a lighthouse", "a robot", "a river", "a clockmaker", "an owl", "a city", "a ship"]


def prompt(index: int) -> str:
    return f"Write a long story about {TOPICS[index % len(TOPICS)]}."


@dataclass
class Row:
    system: str
    sessions: int
    tokens: int
    seconds: float
    ttft_s: list[float] = field(default_factory=list)
    gaps_s: list[float] = field(default_factory=list)
    predicted_tps: float | None = None

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def mape(pairs: list[tuple[float, float]]) -> float | None:
    """Mean absolute percentage error of (predicted, measured) pairs, as a share of measured
    (None without a pair; a measured figure of 0 cannot be a denominator and is left out)."""
    errors = [abs(predicted - measured) / measured for predicted, measured in pairs if measured]
    return sum(errors) / len(errors) if errors else None


# --- transformers ------------------------------------------------------------------------------


def transformers_rows(tokens: int) -> list[Row]:
    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.train(False)
    tokenizer = open_model("default").tokenizer()
    rows = []
    with torch.inference_mode():  # transformers' own loop: its first-run warm-up is excluded
        ids = prompt_ids(tokenizer, None, prompt(0))
        inputs = torch.tensor([ids])
        model.generate(inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm up
        started = time.perf_counter()
        model.generate(inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        rows.append(Row("transformers", 1, tokens, time.perf_counter() - started))
        batch = [prompt_ids(tokenizer, None, prompt(i)) for i in range(8)]
        width = max(len(b) for b in batch)
        pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        padded = torch.tensor([[pad] * (width - len(b)) + b for b in batch])  # left padding
        mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
        started = time.perf_counter()
        model.generate(padded, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        rows.append(Row("transformers generate", 8, 8 * tokens, time.perf_counter() - started))
    return rows


# --- ours --------------------------------------------------------------------------------------


def stream_one(api: str, index: int, tokens: int, row: Row, lock: threading.Lock, api_key: str = "") -> None:
    sent = time.monotonic()
    arrivals: list[float] = []
    count = 0
    messages = [{"role": "user", "content": prompt(index)}]
    for chunk in stream_chunks(api, messages, tokens, temperature=0.0, api_key=api_key):
        if chunk["choices"][0]["delta"].get("content"):
            arrivals.append(time.monotonic())
        count = len(chunk.get("edgeshard", {}).get("token_ids", [])) or count
    with lock:
        row.tokens += count
        if arrivals:
            row.ttft_s.append(arrivals[0] - sent)
            row.gaps_s += [b - a for a, b in itertools.pairwise(arrivals)]


def concurrent(api: str, system: str, sessions: int, tokens: int, api_key: str = "") -> Row:
    row = Row(system, sessions, 0, 0.0)
    lock = threading.Lock()
    threads = [threading.Thread(target=stream_one, args=(api, i, tokens, row, lock, api_key)) for i in range(sessions)]
    predictions: list[float] = []
    started = time.monotonic()
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        status = get_status(api, api_key=api_key)
        load = status.get("api", {})
        if load.get("generating") == sessions and load.get("predicted_tps"):
            predictions.append(float(load["predicted_tps"]))
        time.sleep(0.5)
    row.seconds = time.monotonic() - started
    row.predicted_tps = statistics.median(predictions) if predictions else None
    return row


def cluster(objective: str, sessions: int, base_port: int, logs: Path) -> tuple[list[LocalPeer], dict[str, Any]]:
    args = argparse.Namespace(
        peers=3,
        model="default",
        max_memory="512MiB",
        context=512,
        sessions=sessions,
        objective=objective,
        base_port=base_port,
    )
    logs.mkdir(parents=True, exist_ok=True)
    peers = start_peers(args, logs)
    status = wait_ready(peers, logs, quiet=True)
    time.sleep(3.0)  # the first link probes land
    return peers, wait_ready(peers, logs, quiet=True) or status


def entry_api(peers: list[LocalPeer], status: dict[str, Any]) -> str:
    first = status["plan"]["stages"][0]["device"]
    return next(p.api for p in peers if p.name == first)


def our_rows(tokens: int, counts: list[int], base_port: int) -> tuple[list[Row], dict[str, str]]:
    logs = Path(tempfile.mkdtemp(prefix="edgeshard-throughput-"))
    rows, plans = [], {}
    peers, status = cluster("latency", max(counts), base_port, logs / "latency")
    try:
        plans["latency"] = " → ".join(f"{s['device']}[{s['start']}:{s['end']})" for s in status["plan"]["stages"])
        api = entry_api(peers, status)
        concurrent(api, "warm-up", 1, 8)
        rows.append(concurrent(api, "edgeshard latency plan", 1, tokens))
    finally:
        stop_peers(peers)
    peers, status = cluster("throughput", max(counts), base_port, logs / "throughput")
    try:
        plans["throughput"] = " → ".join(f"{s['device']}[{s['start']}:{s['end']})" for s in status["plan"]["stages"])
        api = entry_api(peers, status)
        concurrent(api, "warm-up", 2, 8)
        for count in counts:
            rows.append(concurrent(api, "edgeshard throughput plan", count, tokens))
            print(f"  {count} sessions: {rows[-1].tps:.1f} tokens/s", file=sys.stderr)
        layouts = {get_status(p.api)["plan"]["layout_id"] for p in peers}
        plans["layout changes under load"] = "none" if layouts == {status["plan"]["layout_id"]} else str(layouts)
    finally:
        stop_peers(peers)
    return rows, plans


def table(rows: list[Row]) -> str:
    one = {r.system: r.tps for r in rows if r.sessions == 1}
    one["transformers generate"] = one.get("transformers", 0.0)
    one["edgeshard throughput plan"] = one.get("edgeshard throughput plan", 0.0)
    lines = [
        "| system | sessions | tokens/s | × one session | TTFT p50 s | TBT p50 ms | TBT p95 ms | predicted tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = one.get(r.system) or r.tps
        ttft, p50, p95 = percentile(r.ttft_s, 0.5), percentile(r.gaps_s, 0.5), percentile(r.gaps_s, 0.95)
        cells = [
            r.system,
            str(r.sessions),
            f"{r.tps:.1f}",
            f"{r.tps / base:.2f}×",
            f"{ttft:.2f}" if ttft is not None else "–",
            f"{p50 * 1000:.0f}" if p50 is not None else "–",
            f"{p95 * 1000:.0f}" if p95 is not None else "–",
            f"{r.predicted_tps:.1f} ({r.tps / r.predicted_tps:.0%} of it)" if r.predicted_tps else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer (default 64)")
    parser.add_argument("--sessions", default="1,2,4,8,16", help="concurrent sessions to try (default 1,2,4,8,16)")
    parser.add_argument("--base-port", type=int, default=7480)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--testbed", action="store_true", help="also the paper's setting on scripts/testbed (root)")
    parser.add_argument("--only-testbed", action="store_true", help="only the paper's setting")
    parser.add_argument(
        "--dilate",
        default="4",
        metavar="D[,D...]",
        help="the testbed's time dilation, or auto (what keeps contention within 5%%: 27 on 2 cores); "
        "several run the table at each (default 4)",
    )
    parser.add_argument("--runs", help="the testbed's rows, by label substring, comma-separated (default all)")
    args = parser.parse_args()
    counts = [int(n) for n in args.sessions.split(",")]
    if not args.only_testbed:
        print("transformers, one process ...", file=sys.stderr)
        rows = transformers_rows(args.tokens)
        print("edgeshard, 3 peer processes ...", file=sys.stderr)
        ours, plans = our_rows(args.tokens, counts, args.base_port)
        rows += ours
        print(f"machine: {torch.get_num_threads()} torch threads; {args.tokens} tokens per answer")
        for name, text in plans.items():
            print(f"{name} plan: {text}" if name != "layout changes under load" else f"{name}: {text}")
        print(table(rows))
        if args.json:
            print(json.dumps([r.__dict__ for r in rows]))
    if args.testbed or args.only_testbed:
        from paper_testbed import paper_tables  # scripts/bench is on the path: this file's folder

        print("the paper's setting on scripts/testbed ...", file=sys.stderr)
        print(paper_tables(args.tokens, args.dilate, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
