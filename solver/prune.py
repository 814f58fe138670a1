"""Device-set pruning for clusters larger than the exact search is built for.

Up to `EXACT_DEVICE_LIMIT` devices the planner searches them all (exact). Past that it keeps:
1. the source (it is pinned);
2. the fastest devices (least time for the whole model), then most memory, then id, until the
   limit is reached: for latency a fast device is what a plan wants, and for throughput the
   fastest devices give the lowest bottleneck for a given number of stages;
3. every device that the memory-greedy packing (largest memory first) uses, so that whenever
   that packing finds a plan on the whole cluster, the kept set also holds one and the search
   returns a feasible plan.
The plan is then exact on the kept devices. `solver.benchmark` measures the optimality gap
against the exact search on clusters where both run.
"""

from __future__ import annotations

from .baselines import greedy
from .costs import CostModel

EXACT_DEVICE_LIMIT = 16


def prune_devices(costs: CostModel, limit: int = EXACT_DEVICE_LIMIT) -> list[int]:
    """The devices the exact search considers (all of them up to `limit`)."""
    devices = list(range(len(costs.ids)))
    if len(devices) <= limit:
        return devices
    ranked = sorted(
        devices,
        key=lambda d: (costs.compute(d, 0, costs.unit_count), -costs.memory[d], costs.ids[d]),
    )
    kept: list[int] = [] if costs.source is None else [costs.source]
    for device in ranked:
        if len(kept) >= limit:
            break
        if device not in kept:
            kept.append(device)
    for stage in greedy(costs) or []:
        if costs.index[stage.device] not in kept:
            kept.append(costs.index[stage.device])
    return sorted(kept)
