"""`scripts/bench-failover`: SIGKILL a middle-stage peer mid-generation, again and again, and
measure what the user sees: the stall, its parts, and whether the tokens equal an undisturbed run.

A local cluster of N peers (256 MiB each: three are needed for the default model) answers a
greedy request once undisturbed (the baseline), then in every round the peer of a middle stage
is killed after `--kill-after` streamed tokens. Per round: detection (kill → the origin notices),
waiting for the new plan (re-plan + shard reload), replay (prefill of prompt + generated tokens
on the new route → the next token), and the longest gap between tokens as the client saw it.
The killed peer is restarted (a new incarnation) before the next round.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeshard.peer.api.client import get_status, stream_chunks
from edgeshard.peer.cli.cluster import LocalPeer, start_peers, stop_peers, wait_ready

SETTLE_S = 5.0  # after a rejoin: link probes land and may move the plan once more
PROMPT = "Write a long story about a dragon who guards a library."


def one_run(api: str, max_tokens: int, victim: LocalPeer | None, kill_after: int) -> dict[str, Any]:
    """Stream one greedy answer; kill `victim` after `kill_after` tokens; time everything."""
    messages = [{"role": "user", "content": PROMPT}]
    arrivals: list[float] = []
    killed_at = None
    last: dict[str, Any] = {}
    for chunk in stream_chunks(api, messages, max_tokens, temperature=0.0, seed=0):
        last = chunk
        if chunk["choices"][0]["delta"].get("content") is None:
            continue
        arrivals.append(time.monotonic())
        if victim is not None and killed_at is None and len(arrivals) == kill_after:
            assert victim.process is not None
            victim.process.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
    extra = last.get("edgeshard", {})
    result: dict[str, Any] = {"token_ids": extra.get("token_ids", []), "failovers": extra.get("failovers", [])}
    if killed_at is not None:
        after = [t for t in arrivals if t > killed_at]
        result["stall_s"] = (after[0] - killed_at) if after else None
    return result


def main() -> int:
    """Run the benchmark and print a table (and JSON with --json)."""
    parser = argparse.ArgumentParser(prog="scripts/bench-failover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--kill-after", type=int, default=16)
    parser.add_argument("--base-port", type=int, default=7460)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cluster_args = argparse.Namespace(
        peers=args.peers,
        model="default",
        max_memory="256MiB",
        context=512,
        prefix_cache=1024,  # the peers' default 4096 would not fit the model in three such peers
        objective="latency",
        base_port=args.base_port,
    )
    logs = Path(tempfile.mkdtemp(prefix="edgeshard-failover-"))
    peers = start_peers(cluster_args, logs)
    rows = []
    try:
        wait_ready(peers, logs, quiet=True)
        for round_ in range(args.rounds + 1):
            status = get_status(peers[0].api)
            stages = status["plan"]["stages"]
            by_name = {p.name: p for p in peers}
            asker = by_name[stages[0]["device"]]
            victim = by_name[stages[1]["device"]] if round_ > 0 else None
            run = one_run(asker.api, args.max_tokens, victim, args.kill_after)
            if round_ == 0:
                baseline = run["token_ids"]
                print(f"baseline: {len(baseline)} tokens, plan over {len(stages)} stages", file=sys.stderr)
                continue
            assert victim is not None
            # The fail-over the kill caused (a re-plan just before it can cause an earlier one).
            caused = [f for f in run["failovers"] if f["at_token"] >= args.kill_after - 1]
            failover = caused[0] if caused else {}
            stall = run["stall_s"]
            notice = stall - failover["seconds"] if failover and stall is not None else None
            rows.append(
                {
                    "round": round_,
                    "killed": victim.name,
                    "identical": run["token_ids"] == baseline,
                    "failovers": len(run["failovers"]),
                    "detection_s": notice,
                    "route_wait_s": failover.get("route_wait_s"),
                    "replay_s": failover["seconds"] - failover["route_wait_s"] if failover else None,
                    "stall_s": stall,
                }
            )
            victim.start()  # the device comes back (a new incarnation) for the next round
            wait_ready(peers, logs, quiet=True)
            time.sleep(SETTLE_S)
    finally:
        stop_peers(peers)

    def cell(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    header = ["round", "killed", "identical", "failovers", "detection_s", "route_wait_s", "replay_s", "stall_s"]
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(cell(row[k]) for k in header))
    stalls = [r["stall_s"] for r in rows if r["stall_s"] is not None]
    if stalls:
        print(f"stall after SIGKILL: median {statistics.median(stalls):.2f} s, max {max(stalls):.2f} s")
    if args.json:
        print(json.dumps(rows))
    return 0 if all(r["identical"] and r["failovers"] == 1 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
