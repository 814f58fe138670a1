"""The comparison strategies of the paper and of the peers' systems, as stage lists.

Each returns stages for `plan.make_plan` to evaluate under the same cost model, or None when the
strategy has no plan that fits this cluster. Device order: the source (if any) first, so stage 0
runs there as the cost model requires.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .costs import CostModel
from .plan import Objective, Stage, evaluate


def anchor(costs: CostModel) -> int:
    """The device the user sits at: the source, else the device with the most memory."""
    if costs.source is not None:
        return costs.source
    return min(range(len(costs.ids)), key=lambda d: (-costs.memory[d], costs.ids[d]))


def fastest(costs: CostModel, exclude: int) -> int | None:
    """The device with the least total per-token time, other than `exclude`."""
    others = [d for d in range(len(costs.ids)) if d != exclude]
    if not others:
        return None
    return min(others, key=lambda d: (costs.compute(d, 0, costs.unit_count), costs.ids[d]))


def _stages(costs: CostModel, devices: list[int], cuts: list[int]) -> list[Stage] | None:
    """Stages from devices and cut points; None if a stage is empty or does not fit."""
    bounds = [0, *cuts, costs.unit_count]
    stages = []
    for device, start, end in zip(devices, bounds, bounds[1:], strict=False):
        stage = _stage(costs, device, start, end) if end > start else None
        if stage is None:
            return None
        stages.append(stage)
    return stages


def _stage(costs: CostModel, device: int, start: int, end: int) -> Stage | None:
    """Units [start, end) on a device in its fastest form that holds them; None if none does."""
    variant = costs.choose(device, start, end)
    return None if variant is None else Stage(costs.ids[device], start, end, costs.variants[device][variant].name)


def _ordered(costs: CostModel, key: Callable[[int], Any]) -> list[int]:
    """All devices, the anchor first, the rest sorted by key."""
    first = anchor(costs)
    return [first, *sorted((d for d in range(len(costs.ids)) if d != first), key=key)]


def _split(costs: CostModel, devices: list[int], weights: list[float]) -> list[Stage] | None:
    """Split the units over devices in proportion to weights (largest remainder, ≥ 1 each)."""
    units = costs.unit_count
    if len(devices) > units:
        return None
    total = sum(weights)
    shares = [max(1, int(units * w / total)) for w in weights]
    order = sorted(range(len(devices)), key=lambda i: -(units * weights[i] / total - shares[i]))
    i = 0
    while sum(shares) < units:
        shares[order[i % len(order)]] += 1
        i += 1
    while sum(shares) > units:
        biggest = max(range(len(shares)), key=lambda k: shares[k])
        shares[biggest] -= 1
    cuts, position = [], 0
    for share in shares[:-1]:
        position += share
        cuts.append(position)
    return _stages(costs, devices, cuts)


def edge_solo(costs: CostModel) -> list[Stage] | None:
    """Everything on the anchor device."""
    return _stages(costs, [anchor(costs)], [])


def cloud_edge_even(costs: CostModel) -> list[Stage] | None:
    """Anchor + the fastest other device, units split in half."""
    cloud = fastest(costs, anchor(costs))
    if cloud is None:
        return None
    return _stages(costs, [anchor(costs), cloud], [costs.unit_count // 2])


def cloud_edge_opt(costs: CostModel, objective: Objective) -> list[Stage] | None:
    """Anchor + the fastest other device, split point chosen optimally for the objective."""
    edge, cloud = anchor(costs), fastest(costs, anchor(costs))
    if cloud is None:
        return None
    best: tuple[tuple[int, int], list[Stage]] | None = None
    for cut in range(1, costs.unit_count):
        stages = _stages(costs, [edge, cloud], [cut])
        if stages is None:
            continue
        cost = evaluate(costs, stages)
        key = (cost.latency_ns, cost.bottleneck_ns) if objective == "latency" else (cost.bottleneck_ns, cost.latency_ns)
        if best is None or key < best[0]:
            best = (key, stages)
    return None if best is None else best[1]


def even(costs: CostModel) -> list[Stage] | None:
    """Equal units on every device; devices whose share does not fit drop out, smallest first."""
    devices = _ordered(costs, key=lambda d: costs.ids[d])
    while devices:
        stages = _split(costs, devices, [1.0] * len(devices))
        if stages is not None:
            return stages
        droppable = [d for d in devices if d != devices[0] or len(devices) == 1]
        devices.remove(min(droppable, key=lambda d: (costs.memory[d], costs.ids[d])))
        if costs.source is not None and costs.source not in devices:
            return None
    return None


def memory_proportional(costs: CostModel) -> list[Stage] | None:
    """exo's ring split: units in proportion to each device's memory."""
    devices = _ordered(costs, key=lambda d: (-costs.memory[d], costs.ids[d]))
    return _split(costs, devices, [float(costs.memory[d]) for d in devices])


def greedy(costs: CostModel) -> list[Stage] | None:
    """Petals-style: each device in turn (largest memory first) takes the longest span it holds."""
    stages, position = [], 0
    for device in _ordered(costs, key=lambda d: (-costs.memory[d], costs.ids[d])):
        end = position
        while end < costs.unit_count and costs.fits(device, position, end + 1):
            end += 1
        stage = _stage(costs, device, position, end) if end > position else None
        if stage is not None:
            stages.append(stage)
            position = end
        elif not stages:
            return None  # the anchor must run stage 0
        if position == costs.unit_count:
            return stages
    return None
