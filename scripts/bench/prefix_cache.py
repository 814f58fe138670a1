"""`scripts/bench-prefix-cache`: conversations that do not start over, in one run.

A local cluster of 3 edgeshard-peer processes (float32 weights, each capped so the model needs
all three), the embedded model, greedy. Every figure is a time to first token (request sent →
first streamed text) through the OpenAI-compatible API, side by side in one run:
  conversation   ten turns, each about 60 tokens in and up to 64 out, once with the prefix cache
                 and once more with the same messages and `cache_prompt: false`
  shared system  eight users at once on one 500-token system prompt (seen once before), beside
                 eight users at once with no system prompt of their own
  long prompt    an 8,000-token prompt while two other sessions decode: their time between
                 tokens before and while it prefills
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
from pathlib import Path
from typing import Any

from edgeshard.peer.api.client import ChatStream, get_status
from edgeshard.peer.cli.cluster import LocalPeer, start_peers, stop_peers, wait_ready

WORDS = [
    *("river", "stone", "lantern", "orchard", "harbor", "meadow", "copper", "violin", "glacier", "pepper"),
    *("candle", "falcon", "marble", "thunder", "saffron", "compass", "velvet", "canyon", "biscuit", "comet"),
    *("ember", "willow", "pebble", "tundra", "quartz"),
]


def sentence(seed: int, words: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(words))


def question(turn: int) -> str:
    """About 60 tokens: a request and a list of words to use."""
    return f"Turn {turn + 1}. Write two sentences that use these words: {sentence(turn, 40)}."


def system_prompt() -> str:
    """About 500 tokens of instructions."""
    rules = [f"Rule {n}: when asked about {sentence(n, 6)}, answer briefly and politely." for n in range(24)]
    return "You are the assistant of a small bakery. " + " ".join(rules)


def ask(api: str, messages: list[dict[str, str]], max_tokens: int, cache: bool = True) -> dict[str, Any]:
    """One streamed chat completion: time to first text, the gaps between texts, the usage."""
    body: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    if not cache:
        body["cache_prompt"] = False
    sent = time.monotonic()
    arrivals: list[float] = []
    text = ""
    with ChatStream(api, body).open() as stream:
        for chunk in stream:
            piece = chunk["choices"][0]["delta"].get("content") if chunk.get("choices") else None
            if piece:
                arrivals.append(time.monotonic())
                text += piece
    usage = stream.usage or {}
    return {
        "ttft_s": arrivals[0] - sent if arrivals else None,
        "gaps_s": [b - a for a, b in itertools.pairwise(arrivals)],
        "text": text,
        "prompt_tokens": usage.get("prompt_tokens"),
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
        "tokens": (stream.edgeshard or {}).get("token_ids", []),
        "ended": time.monotonic(),
    }


def conversation(api: str, turns: int, answer: int) -> list[dict[str, Any]]:
    messages: list[dict[str, str]] = []
    rows = []
    for turn in range(turns):
        messages.append({"role": "user", "content": question(turn)})
        on = ask(api, messages, answer)
        off = ask(api, messages, answer, cache=False)
        rows.append(
            {
                "turn": turn + 1,
                "prompt_tokens": on["prompt_tokens"],
                "cached_tokens": on["cached_tokens"],
                "ttft_cache_s": on["ttft_s"],
                "ttft_no_cache_s": off["ttft_s"],
                "same_tokens": on["tokens"] == off["tokens"],
            }
        )
        print(f"  turn {turn + 1}: {json.dumps(rows[-1])}", file=sys.stderr)
        messages.append({"role": "assistant", "content": on["text"]})
    return rows


def at_once(
    api: str, conversations: list[list[dict[str, str]]], answer: int, cache: bool = True
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in conversations]

    def one(index: int) -> None:
        results[index] = ask(api, conversations[index], answer, cache)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(conversations))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def shared_system(api: str, users: int, answer: int) -> dict[str, Any]:
    system = system_prompt()
    plain = [[{"role": "user", "content": f"User {n}: what bread do you recommend today?"}] for n in range(users)]
    shared = [[{"role": "system", "content": system}, *c] for c in plain]
    ask(api, [{"role": "system", "content": system}, {"role": "user", "content": "Hello."}], 4)  # seen once
    without = at_once(api, plain, answer)
    uncached = at_once(api, plain, answer, cache=False)
    with_system = at_once(api, shared, answer)
    return {
        "users": users,
        "system_prompt_tokens": with_system[0]["prompt_tokens"] - without[0]["prompt_tokens"],
        "ttft_no_system_s": statistics.median(r["ttft_s"] for r in without),
        "ttft_no_system_no_cache_s": statistics.median(r["ttft_s"] for r in uncached),
        "ttft_shared_system_s": statistics.median(r["ttft_s"] for r in with_system),
        "cached_tokens": [r["cached_tokens"] for r in with_system],
        "cached_tokens_no_system": [r["cached_tokens"] for r in without],
    }


def long_prompt(api: str, tokens: int) -> dict[str, Any]:
    """Two sessions decode; an 8k-token prompt arrives among them."""
    filler = " ".join(sentence(n, 12) + "." for n in range(tokens // 14))
    background: list[dict[str, Any]] = [{}, {}]
    marks: dict[str, float] = {}

    def decode(index: int) -> None:
        background[index] = ask(api, [{"role": "user", "content": f"Count from {index} to 400 in words."}], 400)

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(8.0)  # they decode unloaded for a while
    marks["sent"] = time.monotonic()
    big = ask(api, [{"role": "user", "content": filler + "\nSummarise the text above in one line."}], 8)
    marks["first"] = marks["sent"] + (big["ttft_s"] or 0.0)
    for thread in threads:
        thread.join()
    before, during = [], []
    for run in background:  # gaps, split by when the long prompt was prefilling
        clock = run["ended"] - sum(run["gaps_s"])
        for gap in run["gaps_s"]:
            clock += gap
            if clock < marks["sent"]:
                before.append(gap)
            elif clock <= marks["first"]:
                during.append(gap)
    return {
        "prompt_tokens": big["prompt_tokens"],
        "ttft_s": big["ttft_s"],
        "gap_before_s": statistics.median(before) if before else None,
        "gap_during_s": statistics.median(during) if during else None,
        "gap_during_p95_s": sorted(during)[int(0.95 * (len(during) - 1))] if during else None,
    }


def cluster(base_port: int, logs: Path, context: int, cache: int, memory: str) -> list[LocalPeer]:
    args = argparse.Namespace(
        peers=3,
        model="default",
        max_memory=memory,
        context=context,
        sessions=8,
        objective="latency",
        weights="float32",
        base_port=base_port,
        prefix_cache=cache,
    )
    logs.mkdir(parents=True, exist_ok=True)
    peers = start_peers(args, logs)
    wait_ready(peers, logs, quiet=True)
    time.sleep(3.0)  # the first link probes land
    wait_ready(peers, logs, quiet=True)
    return peers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--answer", type=int, default=64, help="tokens per answer at most")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--long", type=int, default=8000, help="tokens of the long prompt (0: skip)")
    parser.add_argument("--base-port", type=int, default=7530)
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="edgeshard-prefix-"))
    context = max(2048, args.long + 512)
    peers = cluster(args.base_port, logs, context, 8192, "1800MiB")  # 3.9 GiB in all: three peers needed
    try:
        status = get_status(peers[0].api)
        stages = " → ".join(f"{s['device']}[{s['start']}:{s['end']})" for s in status["plan"]["stages"])
        api = next(p.api for p in peers if p.name == status["plan"]["stages"][0]["device"])
        print(f"plan: {stages} (context {context}, prefix cache 8192 tokens per stage)", file=sys.stderr)
        ask(api, [{"role": "user", "content": "Hi."}], 4, cache=False)  # warm-up
        result: dict[str, Any] = {"plan": stages, "context": context}
        result["conversation"] = conversation(api, args.turns, args.answer)
        result["shared_system"] = shared_system(api, args.users, 16)
        if args.long:
            result["long_prompt"] = long_prompt(api, args.long)
        result["prefix_cache"] = [get_status(p.api)["shard"].get("prefix_cache") for p in peers]
    finally:
        stop_peers(peers)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def report(result: dict[str, Any]) -> str:
    lines = [
        f"plan: {result['plan']}",
        "",
        "| turn | prompt tokens | reused | TTFT cache on | TTFT off | same tokens |",
    ]
    lines.append("|---:|---:|---:|---:|---:|---|")
    for row in result["conversation"]:
        lines.append(
            f"| {row['turn']} | {row['prompt_tokens']} | {row['cached_tokens']} | {row['ttft_cache_s']:.2f} s "
            f"| {row['ttft_no_cache_s']:.2f} s | {'yes' if row['same_tokens'] else 'NO'} |"
        )
    rows = result["conversation"]
    lines.append(
        f"\nturn {rows[-1]['turn']} / turn 1 time to first token: cache on "
        f"{rows[-1]['ttft_cache_s'] / rows[0]['ttft_cache_s']:.2f}x, off "
        f"{rows[-1]['ttft_no_cache_s'] / rows[0]['ttft_no_cache_s']:.2f}x"
    )
    shared = result["shared_system"]
    lines.append(
        f"{shared['users']} users at once, {shared['system_prompt_tokens']}-token shared system prompt: median TTFT "
        f"{shared['ttft_shared_system_s']:.2f} s (reused {shared['cached_tokens'][0]} tokens each); with no system "
        f"prompt of their own {shared['ttft_no_system_s']:.2f} s (the template's own reused: "
        f"{shared['cached_tokens_no_system'][0]}), {shared['ttft_shared_system_s'] / shared['ttft_no_system_s']:.2f}x; "
        f"the same with cache_prompt false {shared['ttft_no_system_no_cache_s']:.2f} s, "
        f"{shared['ttft_shared_system_s'] / shared['ttft_no_system_no_cache_s']:.2f}x"
    )
    if long := result.get("long_prompt"):
        ratio = (long["gap_during_s"] or 0) / long["gap_before_s"] if long.get("gap_before_s") else float("nan")
        lines.append(
            f"{long['prompt_tokens']}-token prompt: first token after {long['ttft_s']:.1f} s; two decoding sessions' "
            f"median time between tokens {long['gap_before_s'] * 1000:.0f} ms before, "
            f"{(long['gap_during_s'] or 0) * 1000:.0f} ms while it prefilled ({ratio:.2f}x; p95 "
            f"{(long['gap_during_p95_s'] or 0) * 1000:.0f} ms)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
