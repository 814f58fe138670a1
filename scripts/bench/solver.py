"""Solve-time and optimality-gap benchmark (`scripts/bench-solver`); prints tables, asserts nothing."""

from __future__ import annotations

import argparse
import random
import signal
import time
from types import FrameType

from edgeshard.solver.classes import device_classes
from edgeshard.solver.costs import CostModel
from edgeshard.solver.errors import InfeasibleError
from edgeshard.solver.plan import OBJECTIVES, Objective, Plan
from edgeshard.solver.planner import plan
from edgeshard.solver.random_clusters import random_cluster


class _Timeout(Exception):
    pass


def _alarm(_signal: int, _frame: FrameType | None) -> None:
    raise _Timeout


def _timed(cluster_plan: tuple[object, ...], limit_s: int) -> tuple[Plan | str | None, float]:
    cluster, objective, device_limit = cluster_plan
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit_s)
    start = time.perf_counter()
    try:
        return plan(cluster, objective, device_limit=device_limit), time.perf_counter() - start  # type: ignore[arg-type]
    except InfeasibleError:
        return None, time.perf_counter() - start
    except _Timeout:
        return "timeout", time.perf_counter() - start
    finally:
        signal.alarm(0)


def _cell(result: Plan | str | None, seconds: float) -> str:
    if result == "timeout":
        return f">{seconds:.0f}s"
    if not isinstance(result, Plan):
        return f"{seconds:.3f}s (infeasible)"
    return f"{seconds:.3f}s" + ("" if result.optimal else " (pruned)")


def solve_times(kinds: int | None, limit_s: int, seed: int) -> None:
    """Solve times for 4/8/16/32/64 devices × 34/42/82 units, both objectives."""
    label = f"{kinds} kinds of device" if kinds else "every device different"
    print(f"\n## Solve times, {label} (seed {seed}; limit {limit_s}s per solve)\n")
    print("| devices | units | classes | latency | throughput | stages (lat/thr) |")
    print("|---:|---:|---:|---:|---:|---|")
    rng = random.Random(seed)
    for devices in (4, 8, 16, 32, 64):
        if kinds is None and devices > 16:
            continue
        for units in (34, 42, 82):
            cluster = random_cluster(rng, devices, units, kinds=kinds)
            classes = len(device_classes(CostModel(cluster)))
            cells, stages = [], []
            for objective in OBJECTIVES:
                result, seconds = _timed((cluster, objective, 16), limit_s)
                cells.append(_cell(result, seconds))
                stages.append(str(len(result.stages)) if isinstance(result, Plan) else "-")
            print(f"| {devices} | {units} | {classes} | {cells[0]} | {cells[1]} | {'/'.join(stages)} |")


def _objective_value(result: Plan, objective: Objective) -> int:
    return result.cost.latency_ns if objective == "latency" else result.cost.bottleneck_ns


def pruning_gap(instances: int, limit_s: int, seed: int) -> None:
    """Pruned (8 devices kept) against exact on all, on 10-14 devices of 6-10 kinds."""
    print(f"\n## Pruning gap: 8 devices kept vs all searched (seed {seed})\n")
    print("| objective | instances compared | exact over budget | same optimum | mean gap | worst gap |")
    print("|---|---:|---:|---:|---:|---:|")
    for objective in OBJECTIVES:
        rng = random.Random(seed)
        gaps, timeouts = [], 0
        for _ in range(instances):
            devices = rng.randint(10, 14)
            cluster = random_cluster(rng, devices, rng.choice([34, 42]), kinds=rng.randint(6, 10))
            exact, _ = _timed((cluster, objective, devices), limit_s)
            if exact == "timeout" or (isinstance(exact, Plan) and not exact.optimal):
                timeouts += 1
                continue
            pruned, _ = _timed((cluster, objective, 8), limit_s)
            if not isinstance(exact, Plan):
                continue
            assert isinstance(pruned, Plan), "pruning lost feasibility"
            best, got = _objective_value(exact, objective), _objective_value(pruned, objective)
            gaps.append(got / best - 1)
        same = sum(1 for g in gaps if g == 0)
        mean = sum(gaps) / len(gaps) if gaps else 0.0
        worst = max(gaps, default=0.0)
        print(f"| {objective} | {len(gaps)} | {timeouts} | {same} | {mean:.2%} | {worst:.2%} |")


def main() -> None:
    """Entry point of scripts/bench-solver."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=60, help="seconds per solve before giving up")
    parser.add_argument("--gap-instances", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    solve_times(3, args.limit, args.seed)
    solve_times(None, args.limit, args.seed)
    pruning_gap(args.gap_instances, args.limit, args.seed)


if __name__ == "__main__":
    main()
