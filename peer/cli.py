"""`edgeshard`: the user's tool (plan, compare; more subcommands as the runtime grows)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from edgeshard.solver import EXACT, OBJECTIVES, STRATEGIES, Cluster, Plan, SolverError, plan
from edgeshard.solver.clusterfile import bundled_names, load_cluster
from edgeshard.solver.errors import ClusterFileError, InfeasibleError

EXIT_INFEASIBLE = 1
EXIT_USAGE = 2


def _stages_text(result: Plan) -> str:
    return " → ".join(f"{s.device}[{s.start}:{s.end})" for s in result.stages)


def _print_plan(result: Plan, cluster: Cluster) -> None:
    units = cluster.model.units
    print(
        f"model {cluster.model.name}: {len(units)} units; objective {result.objective}; "
        f"strategy {result.strategy}; source {result.source or '(none)'}"
    )
    print(f"{'stage':>5}  {'device':<16} {'units':<12} {'names':<28} {'memory GiB':>10}")
    for index, stage in enumerate(result.stages):
        names = units[stage.start].name
        if stage.end - stage.start > 1:
            names += f" .. {units[stage.end - 1].name}"
        memory = sum(u.bytes for u in units[stage.start : stage.end]) / 2**30
        span = f"[{stage.start}, {stage.end})"
        print(f"{index:>5}  {stage.device:<16} {span:<12} {names:<28} {memory:>10.2f}")
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


def _cluster_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        required=True,
        metavar="FILE",
        help=f"cluster file (JSON or TOML), or a bundled testbed: paper:NAME ({', '.join(bundled_names())})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `edgeshard`."""
    parser = argparse.ArgumentParser(prog="edgeshard", description="EdgeShard: plan and run an LLM across devices.")
    commands = parser.add_subparsers(dest="command", required=True)

    plan_parser = commands.add_parser("plan", help="choose devices and split points for a cluster")
    _cluster_argument(plan_parser)
    plan_parser.add_argument("--objective", choices=OBJECTIVES, default="latency")
    plan_parser.add_argument("--strategy", choices=STRATEGIES, default=EXACT)
    plan_parser.add_argument("--json", action="store_true", help="print one JSON object")

    compare_parser = commands.add_parser("compare", help="every strategy side by side")
    _cluster_argument(compare_parser)
    compare_parser.add_argument("--json", action="store_true", help="print one JSON object")

    from . import generate  # torch and transformers load only for the commands that run a model

    generate_parser = commands.add_parser("generate", help="run the model split over local stage servers")
    generate.add_arguments(generate_parser)
    from . import chat

    chat_parser = commands.add_parser("chat", help="chat: through a peer's API, or over local stage servers")
    chat.add_arguments(chat_parser)
    from . import localpeers

    cluster_parser = commands.add_parser("cluster", help="run N edgeshard-peer processes on this machine")
    localpeers.add_arguments(cluster_parser)
    status_parser = commands.add_parser("status", help="a running peer's view of the cluster and its plan")
    status_parser.add_argument("--api", default="http://127.0.0.1:7421", metavar="URL")
    status_parser.add_argument("--json", action="store_true", help="print the raw /v1/status object")
    return parser


def _status(args: argparse.Namespace) -> int:
    from .apiclient import describe_status, get_status

    status = get_status(args.api)
    print(json.dumps(status, indent=2) if args.json else describe_status(status))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edgeshard`."""
    args = build_parser().parse_args(argv)
    if args.command in ("generate", "chat", "cluster", "status"):
        from . import chat, generate, localpeers
        from .errors import PeerError

        run = {"generate": generate.main, "chat": chat.main, "cluster": localpeers.main, "status": _status}
        try:
            return run[args.command](args)
        except PeerError as error:
            print(f"edgeshard: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            return 130
    try:
        cluster = load_cluster(args.cluster)
        if args.command == "plan":
            result = plan(cluster, args.objective, args.strategy)
            if args.json:
                print(json.dumps(result.to_json()))
            else:
                _print_plan(result, cluster)
        elif args.command == "compare":
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


if __name__ == "__main__":
    sys.exit(main())
