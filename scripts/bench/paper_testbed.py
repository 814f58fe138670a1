"""The paper's setting on `scripts/testbed` (root): EdgeShard's plans against the baselines, each
run for real, `scripts/bench-throughput --testbed`.

Four hosts as in the paper's small cluster: h1 an AGX Orin (the source: prompts come from it),
h2 another AGX Orin, h3 an Orin NX, h4 the "RTX 3090" (this machine's own speed). The Jetsons
compute slower by the paper's measured per-layer ratios to the 3090 (AGX Orin 5.277/0.792 ms,
Orin NX 6.019/0.792 ms: `--emulate-slowdown`); links are shaped by HTB to the paper's rates
(950 Mbit/s between edge devices, 10 Mbit/s between the source and the 3090). This kernel has
no netem, so the paper's 2.1 ms link latency is not emulated. For every strategy the cluster is
brought up with that plan, then measured: one session (ms per token), and 8 concurrent sessions
(aggregate tokens/s), each beside the planner's prediction for its costs.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeshard.peer.api.client import get_status

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: testbed.py
from testbed import read_api_key
from throughput import Row, concurrent, percentile

TESTBED = str(Path(__file__).resolve().parent.parent / "testbed")
SOURCE_API = "http://198.18.0.1:7421"
SLOWDOWN = {"h1": 5.277 / 0.792, "h2": 5.277 / 0.792, "h3": 6.019 / 0.792, "h4": 1.0}
NAMES = {"h1": "agx-orin (source)", "h2": "agx-orin", "h3": "orin-nx", "h4": "rtx-3090"}
RUNS = [  # (label, strategy, objective)
    ("EdgeShard, latency plan", "edgeshard", "latency"),
    ("EdgeShard, throughput plan", "edgeshard", "throughput"),
    ("edge-solo", "edge-solo", "latency"),
    ("cloud-edge-even", "cloud-edge-even", "latency"),
    ("cloud-edge-opt", "cloud-edge-opt", "latency"),
    ("even", "even", "latency"),
    ("memory-proportional", "memory-proportional", "latency"),
]


@dataclass
class PaperRow:
    label: str
    stages: str
    latency: Row
    throughput: Row


def testbed(*arguments: str) -> None:
    subprocess.run([TESTBED, *arguments], check=True, stdout=sys.stderr)


def describe(status: dict[str, Any]) -> str:
    return " → ".join(
        f"{NAMES.get(s['device'], s['device'])}[{s['start']}:{s['end']})" for s in status["plan"]["stages"]
    )


def one_run(label: str, strategy: str, objective: str, tokens: int, sessions: int) -> PaperRow:
    arguments = ["up", "4", "--source", "h1", "--objective", objective, "--strategy", strategy]
    arguments += ["--default", "rate 950mbit", "--link", "h1-h4=rate 10mbit", "--sessions", str(sessions)]
    for host, factor in SLOWDOWN.items():
        arguments += ["--slowdown", f"{host}={factor:.3f}"]
    testbed(*arguments, "--wait", "600")
    try:
        key = read_api_key()  # the testbed's APIs are bound to its hosts' addresses: they need one
        stages = describe(get_status(SOURCE_API, api_key=key))
        concurrent(SOURCE_API, "warm-up", 1, 4, key)
        latency = concurrent(SOURCE_API, label, 1, tokens, key)
        throughput = concurrent(SOURCE_API, label, sessions, tokens, key)
    finally:
        testbed("down")
    return PaperRow(label, stages, latency, throughput)


def paper_table(tokens: int, sessions: int = 8) -> str:
    rows = [one_run(label, strategy, objective, tokens, sessions) for label, strategy, objective in RUNS]
    solo = next(r for r in rows if r.label == "edge-solo")
    solo_ms = percentile(solo.latency.gaps_s, 0.5) or 1.0
    lines = [
        f"| plan | stages | ms/token, 1 session (predicted) | vs edge-solo | tokens/s, {sessions} sessions "
        "(predicted) | vs edge-solo |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        ms = (percentile(row.latency.gaps_s, 0.5) or 0.0) * 1000
        predicted_ms = 1000 / row.latency.predicted_tps if row.latency.predicted_tps else None
        tps, predicted_tps = row.throughput.tps, row.throughput.predicted_tps
        cells = [
            row.label,
            row.stages,
            f"{ms:.0f} ({predicted_ms:.0f})" if predicted_ms else f"{ms:.0f}",
            f"{ms / (solo_ms * 1000):.2f}×",
            f"{tps:.1f} ({predicted_tps:.1f})" if predicted_tps else f"{tps:.1f}",
            f"{tps / solo.throughput.tps:.2f}×",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
