"""The paper's setting on `scripts/testbed` (root): EdgeShard's plans against the baselines, each
run for real, `scripts/bench-throughput --testbed`.

Four hosts as in the paper's small cluster: h1 an AGX Orin (the source: prompts come from it),
h2 another AGX Orin, h3 an Orin NX, h4 the "RTX 3090" (this machine's own speed). The Jetsons
compute slower by the paper's measured per-layer ratios to the 3090 (AGX Orin 5.277/0.792 ms,
Orin NX 6.019/0.792 ms: `--emulate-slowdown`); links are shaped by HTB to the paper's rates
(950 Mbit/s between edge devices, 10 Mbit/s between the source and the 3090) and the paper's
2.1 ms link latency held by each peer (this kernel has no netem: `--emulate-delay-ms`). For every
strategy the cluster is brought up with that plan, then measured: one session (ms per token),
and 8 concurrent sessions (aggregate tokens/s), each beside the planner's prediction for its costs.

The four hosts share this machine's cores, so the testbed is dilated (scripts/dilation.py): every
host runs D times slower than its device, and every figure is divided back by D. D is chosen
from the contention (`choose_factor`) unless given; several D side by side show whether a larger
one still changes the results. The mean absolute percentage error (MAPE) of predicted against
measured covers every row's latency and tokens/s.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from edgeshard.peer.api.client import get_status

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: testbed.py, dilation.py
from dilation import Dilation, choose_factor, contention_error
from testbed import read_api_key
from throughput import Row, concurrent, mape, percentile

TESTBED = str(Path(__file__).resolve().parent.parent / "testbed")
SOURCE_API = "http://198.18.0.1:7421"
SLOWDOWN = {"h1": 5.277 / 0.792, "h2": 5.277 / 0.792, "h3": 6.019 / 0.792, "h4": 1.0}
LINK_DELAY = "delay 2.1ms"  # the paper's link latency, on every link
TOLERANCE = 0.05  # what sharing the cores may add to a host's dilated time, on average, under `auto`
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
    dilation: Dilation

    @property
    def ms(self) -> float:
        """Median ms per token of one session, in the devices' time."""
        return self.dilation.seconds(percentile(self.latency.gaps_s, 0.5) or 0.0) * 1000

    @property
    def predicted_ms(self) -> float | None:
        tps = self.latency.predicted_tps
        return 1000 / self.dilation.per_second(tps) if tps else None

    @property
    def tps(self) -> float:
        return self.dilation.per_second(self.throughput.tps)

    @property
    def predicted_tps(self) -> float | None:
        tps = self.throughput.predicted_tps
        return self.dilation.per_second(tps) if tps else None

    def pairs(self) -> list[tuple[float, float]]:
        """(predicted, measured) of this row's latency and tokens/s, where predicted."""
        pairs = [(self.predicted_ms, self.ms)] if self.predicted_ms else []
        return pairs + ([(self.predicted_tps, self.tps)] if self.predicted_tps else [])


def testbed(*arguments: str) -> None:
    subprocess.run([TESTBED, *arguments], check=True, stdout=sys.stderr)


def describe(status: dict[str, Any]) -> str:
    return " → ".join(
        f"{NAMES.get(s['device'], s['device'])}[{s['start']}:{s['end']})" for s in status["plan"]["stages"]
    )


def one_run(label: str, strategy: str, objective: str, tokens: int, sessions: int, dilation: Dilation) -> PaperRow:
    arguments = ["up", "4", "--source", "h1", "--objective", objective, "--strategy", strategy]
    arguments += ["--default", f"{LINK_DELAY} rate 950mbit", "--link", f"h1-h4={LINK_DELAY} rate 10mbit"]
    arguments += ["--sessions", str(sessions), "--dilate", f"{dilation.factor:g}"]
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
    row = PaperRow(label, stages, latency, throughput, dilation)
    # each row as it is measured (the table comes at the end): a run cut short keeps its rows
    print(
        f"D={dilation.factor:g} {label}: {stages}; {row.ms:.0f} ms/token (predicted {row.predicted_ms or 0:.0f}), "
        f"{row.tps:.1f} tokens/s (predicted {row.predicted_tps or 0:.1f})",
        file=sys.stderr,
        flush=True,
    )
    return row


def auto_factor() -> float:
    """D for this machine: the four hosts' slowdowns, torch's threads per peer on its cores,
    contention within TOLERANCE (scripts/dilation.py)."""
    return choose_factor(list(SLOWDOWN.values()), os.cpu_count() or 1, torch.get_num_threads(), TOLERANCE)


def paper_table(tokens: int, dilation: Dilation, sessions: int = 8, only: list[str] | None = None) -> str:
    runs = [run for run in RUNS if not only or any(word.lower() in run[0].lower() for word in only)]
    rows = [one_run(label, strategy, objective, tokens, sessions, dilation) for label, strategy, objective in runs]
    solo = next((r for r in rows if r.label == "edge-solo"), rows[0])
    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    worst = contention_error(dilation.factor, list(SLOWDOWN.values()), cores, threads)
    lines = [
        f"D = {dilation.factor:g} (sharing {cores} cores adds at most {worst:.0%} to a host's time, on average; "
        f"within {TOLERANCE:.0%} needs D = {auto_factor():g}, `--dilate auto`); "
        f"figures in the devices' time, measured on the testbed divided back by D; against {solo.label}",
        "",
        f"| plan | stages | ms/token, 1 session (predicted) | vs {solo.label} | tokens/s, {sessions} sessions "
        f"(predicted) | vs {solo.label} |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [
            row.label,
            row.stages,
            f"{row.ms:.0f} ({row.predicted_ms:.0f})" if row.predicted_ms else f"{row.ms:.0f}",
            f"{row.ms / (solo.ms or 1.0):.2f}×",
            f"{row.tps:.1f} ({row.predicted_tps:.1f})" if row.predicted_tps else f"{row.tps:.1f}",
            f"{row.tps / (solo.tps or 1.0):.2f}×",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    error = mape([pair for row in rows for pair in row.pairs()])
    lines.append("")
    lines.append(
        f"MAPE, predicted vs measured over every row: {error:.1%}" if error is not None else "MAPE: no prediction"
    )
    return "\n".join(lines)


def paper_tables(tokens: int, dilate: str = "auto", runs: str | None = None) -> str:
    """The table at each D of `dilate` ('auto', or factors comma-separated), one after another."""
    factors = [auto_factor() if word == "auto" else float(word) for word in dilate.split(",")]
    only = runs.split(",") if runs else None
    return "\n\n".join(paper_table(tokens, Dilation(factor), only=only) for factor in factors)
