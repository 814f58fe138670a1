"""`edgeshard plan` and `edgeshard compare`: the planner on a cluster file (no torch, no network)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edgeshard.solver import EXACT, OBJECTIVES, STRATEGIES, Cluster, Plan, SolverError, plan
from edgeshard.solver.clusterfile import bundled_names, load_cluster
from edgeshard.solver.costs import CostModel
from edgeshard.solver.errors import ClusterFileError, InfeasibleError

EXIT_INFEASIBLE = 1
EXIT_USAGE = 2


def _stages_text(result: Plan) -> str:
    return " → ".join(f"{s.device}[{s.start}:{s.end})" + (f" {s.form}" if s.form else "") for s in result.stages)


def _print_plan(result: Plan, cluster: Cluster) -> None:
    units = cluster.model.units
    print(
        f"model {cluster.model.name}: {len(units)} units; objective {result.objective}; "
        f"strategy {result.strategy}; source {result.source or '(none)'}"
    )
    costs = CostModel(cluster)
    forms = any(stage.form for stage in result.stages)
    print(f"{'stage':>5}  {'device':<16} {'units':<12} {'names':<28} {'memory GiB':>10}" + ("  form" if forms else ""))
    for index, stage in enumerate(result.stages):
        names = units[stage.start].name
        if stage.end - stage.start > 1:
            names += f" .. {units[stage.end - 1].name}"
        device = costs.index[stage.device]
        memory = costs.unit_bytes(device, stage.start, stage.end, costs.variant_of(device, stage.form)) / 2**30
        span = f"[{stage.start}, {stage.end})"
        print(
            f"{index:>5}  {stage.device:<16} {span:<12} {names:<28} {memory:>10.2f}"
            + (f"  {stage.form}" if forms else "")
        )
    optimal = "proven optimal" if result.optimal else "not proven optimal"
    if result.strategy != EXACT:
        optimal = "baseline"
    print(
        f"latency {result.latency_ms:.3f} ms/token · bottleneck {result.bottleneck_ms:.3f} ms "
        f"· throughput {result.throughput_tps:.2f} tokens/s · plan {result.plan_id} ({optimal})"
    )


def _compare_rows(cluster: Cluster) -> list[dict[str, Any]]:
    runs = [(EXACT, objective) for objective in OBJECTIVES]
    runs += [(strategy, "latency") for strategy in STRATEGIES if strategy != EXACT]
    rows: list[dict[str, Any]] = []
    for strategy, objective in runs:
        name = f"{strategy}-{objective}" if strategy == EXACT else strategy
        try:
            result = plan(cluster, objective, strategy)
        except InfeasibleError as error:
            rows.append({"strategy": name, "error": str(error)})
            continue
        rows.append({**result.to_json(), "strategy": name, "devices_used": len(result.stages)})
    solo = next((r for r in rows if r["strategy"] == "edge-solo" and "error" not in r), None)
    for row in rows:
        if "error" not in row and solo is not None:
            row["latency_gain"] = solo["latency_ms"] / row["latency_ms"]
            row["throughput_gain"] = row["throughput_tps"] / solo["throughput_tps"]
    return rows


def _print_compare(rows: list[dict[str, Any]], cluster: Cluster) -> None:
    print(
        f"model {cluster.model.name} ({len(cluster.model.units)} units, "
        f"{cluster.model.total_bytes / 2**30:.1f} GiB) on {len(cluster.devices)} devices, "
        f"source {cluster.source or '(none)'}"
    )
    header = f"{'strategy':<22} {'devices':>7} {'latency ms':>11} {'tokens/s':>9} {'lat. gain':>9} {'thr. gain':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        if "error" in row:
            print(f"{row['strategy']:<22} {'—':>7}  no plan: {row['error'].split(': ', 1)[-1]}")
            continue
        gains = (
            f"{row['latency_gain']:>8.2f}× {row['throughput_gain']:>8.2f}×"
            if "latency_gain" in row
            else f"{'—':>9} {'—':>9}"
        )
        print(
            f"{row['strategy']:<22} {row['devices_used']:>7} {row['latency_ms']:>11.2f} "
            f"{row['throughput_tps']:>9.2f} {gains}"
        )
    print("gain: over edge-solo (lower latency, higher throughput); throughput with the pipeline full")


def cluster_argument(parser: argparse.ArgumentParser) -> None:
    """--cluster FILE, shared by plan and compare."""
    parser.add_argument(
        "--cluster",
        required=True,
        metavar="FILE",
        help=f"cluster file (JSON or TOML), or a bundled testbed: paper:NAME ({', '.join(bundled_names())})",
    )


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edgeshard plan`."""
    cluster_argument(parser)
    parser.add_argument("--objective", choices=OBJECTIVES, default="latency")
    parser.add_argument("--strategy", choices=STRATEGIES, default=EXACT)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edgeshard compare`."""
    cluster_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    """Run `edgeshard plan` or `edgeshard compare`."""
    try:
        cluster = load_cluster(args.cluster)
        if args.command == "plan":
            result = plan(cluster, args.objective, args.strategy)
            if args.json:
                print(json.dumps(result.to_json()))
            else:
                _print_plan(result, cluster)
        else:
            rows = _compare_rows(cluster)
            if args.json:
                print(json.dumps({"model": cluster.model.name, "source": cluster.source, "strategies": rows}))
            else:
                _print_compare(rows, cluster)
    except ClusterFileError as error:
        print(f"edgeshard: error: cluster file {error}", file=sys.stderr)
        return EXIT_USAGE
    except InfeasibleError as error:
        print(f"edgeshard: {error}", file=sys.stderr)
        return EXIT_INFEASIBLE
    except SolverError as error:
        print(f"edgeshard: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0
