"""`plan(cluster, objective, strategy)`: the one entry point for every strategy.

"edgeshard" is the exact planner: latency minimises Σ compute + Σ transfers; throughput
minimises the bottleneck and, among plans with that bottleneck, the latency. Past
`EXACT_DEVICE_LIMIT` devices (after merging interchangeable ones into classes) the device set is
pruned first (see `prune`); the plan is then exact on the kept devices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from . import baselines
from .classes import device_classes
from .cluster import Cluster
from .costs import NS_PER_MS, CostModel
from .errors import InfeasibleError, SolverError
from .plan import Objective, Plan, Stage, make_plan, stage_times
from .prune import EXACT_DEVICE_LIMIT, prune_devices
from .search import SearchBudgetExceeded, SearchResult, exact_search

EXACT = "edgeshard"
BASELINES: dict[str, Callable[[CostModel, Objective], list[Stage] | None]] = {
    "edge-solo": lambda costs, _: baselines.edge_solo(costs),
    "cloud-edge-even": lambda costs, _: baselines.cloud_edge_even(costs),
    "cloud-edge-opt": baselines.cloud_edge_opt,
    "even": lambda costs, _: baselines.even(costs),
    "memory-proportional": lambda costs, _: baselines.memory_proportional(costs),
    "greedy": lambda costs, _: baselines.greedy(costs),
}
STRATEGIES: tuple[str, ...] = (EXACT, *BASELINES)
# States one exact search may generate (about 5-10 s here) before the planner falls back to
# the FALLBACK_DEVICE_LIMIT most useful devices. Reached only by many all-different devices.
SEARCH_BUDGET = 2_000_000
FALLBACK_DEVICE_LIMIT = 8
# Clusters of at most this many device classes are searched whole, however many devices.
EXACT_CLASS_LIMIT = 5


def gib(nbytes: int) -> str:
    """Bytes as GiB for messages."""
    return f"{nbytes / 2**30:.2f} GiB"


def infeasibility_reason(costs: CostModel) -> str:
    """Why no plan fits: how much memory is missing, or which unit fits nowhere."""
    total, available = costs.bytes_prefix[-1], sum(costs.memory)
    if total > available:
        return (
            f"the model needs {gib(total)} but all devices together offer {gib(available)}: "
            f"{gib(total - available)} missing"
        )
    largest = max(costs.memory)
    for index, unit in enumerate(costs.cluster.model.units):
        if all(not costs.fits(d, index, index + 1) for d in range(len(costs.ids))):
            least = costs.bytes_prefix[index + 1] - costs.bytes_prefix[index]
            return f"unit {unit.name!r} needs {gib(least)}; the largest device offers {gib(largest)}"
    if costs.source is not None and not costs.fits(costs.source, 0, 1):
        return f"the source {costs.ids[costs.source]!r} cannot hold unit 0"
    return (
        f"the devices offer {gib(available)} for {gib(total)}, but the units cannot be cut into "
        "contiguous stages, one per device, that each fit"
    )


def _search(costs: CostModel, objective: Objective, devices: list[int], budget: int | None) -> list[Stage] | None:
    classes = device_classes(costs, devices)
    result: SearchResult | None
    if objective == "latency":
        result = exact_search(costs, classes, "sum", budget=budget)
    else:
        bottleneck = exact_search(costs, classes, "max", budget=budget)
        result = None if bottleneck is None else exact_search(costs, classes, "sum", bottleneck.cost, budget=budget)
    if result is None:
        return None
    taken = {k: iter(c.members) for k, c in enumerate(classes)}
    stages = []
    for segment in result.segments:
        device = next(taken[segment.cls])
        form = costs.variants[device][segment.variant].name  # members of a class offer the same forms
        stages.append(Stage(costs.ids[device], segment.start, segment.end, form))
    return stages


def _exact(costs: CostModel, objective: Objective, device_limit: int) -> tuple[list[Stage] | None, bool]:
    """(stages, proven optimal on the whole cluster).

    Device sets are tried from largest to smallest: all devices (when few or of few kinds),
    then the `device_limit` and `FALLBACK_DEVICE_LIMIT` most useful. Each but the last try has
    a budget of expanded states (a count, so every peer falls back at the same point).
    """
    everything = list(range(len(costs.ids)))
    attempts: list[list[int]] = []
    if len(everything) <= device_limit or len(device_classes(costs)) <= EXACT_CLASS_LIMIT:
        attempts.append(everything)
    for limit in (device_limit, FALLBACK_DEVICE_LIMIT):
        devices = prune_devices(costs, limit)
        if devices not in attempts:
            attempts.append(devices)
    for number, devices in enumerate(attempts):
        last = number == len(attempts) - 1
        try:
            stages = _search(costs, objective, devices, None if last else SEARCH_BUDGET)
        except SearchBudgetExceeded:
            continue
        return stages, devices == everything
    raise AssertionError("the last attempt has no budget")


def plan(
    cluster: Cluster,
    objective: Objective = "latency",
    strategy: str = EXACT,
    device_limit: int = EXACT_DEVICE_LIMIT,
) -> Plan:
    """Plan the cluster with one strategy; InfeasibleError if it finds no plan that fits."""
    costs = CostModel(cluster)
    optimal = False
    if strategy == EXACT:
        stages, optimal = _exact(costs, objective, device_limit)
    elif strategy in BASELINES:
        stages = BASELINES[strategy](costs, objective)
    else:
        raise SolverError(f"unknown strategy {strategy!r} (one of: {', '.join(STRATEGIES)})")
    if stages is None:
        if strategy == EXACT:
            raise InfeasibleError(f"no plan fits: {infeasibility_reason(costs)}")
        raise InfeasibleError(f"{strategy} has no plan that fits this cluster")
    return make_plan(costs, objective, strategy, stages, optimal)


def assess(cluster: Cluster, objective: Objective, stages: Sequence[Stage], strategy: str = "kept") -> Plan:
    """A plan for stages chosen elsewhere, costed on this cluster (InvalidPlanError when they do
    not form a valid plan here: a device is gone, or no longer holds its units)."""
    return make_plan(CostModel(cluster), objective, strategy, stages)


def stage_ms(cluster: Cluster, stages: Sequence[Stage]) -> tuple[list[float], list[float]]:
    """Per stage, ms per token: compute, and transfer out of it (`plan.stage_times`); what a
    reply's measured times are set beside (InvalidPlanError when the stages are not valid here)."""
    compute, transfer = stage_times(CostModel(cluster), stages)
    return [ns / NS_PER_MS for ns in compute], [ns / NS_PER_MS for ns in transfer]
