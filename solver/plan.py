"""Plans, their evaluation under the cost model, and stable plan ids."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NewType

from .cluster import Cluster, DeviceId
from .costs import NS_PER_MS, CostModel
from .errors import InvalidPlanError

PlanId = NewType("PlanId", str)
Objective = Literal["latency", "throughput"]
OBJECTIVES: tuple[Objective, ...] = ("latency", "throughput")


@dataclass(frozen=True)
class Stage:
    """Units [start, end) on one device, in one of the forms it offers ("": its own)."""

    device: DeviceId
    start: int
    end: int
    form: str = ""

    def to_json(self) -> dict[str, Any]:
        """The stage in a plan document (a form only where one was chosen)."""
        document: dict[str, Any] = {"device": self.device, "start": self.start, "end": self.end}
        if self.form:
            document["form"] = self.form
        return document


@dataclass(frozen=True)
class Cost:
    """A plan's cost in whole nanoseconds."""

    latency_ns: int
    bottleneck_ns: int


@dataclass(frozen=True)
class Plan:
    """A plan with its predicted cost and id."""

    objective: Objective
    strategy: str
    source: DeviceId | None
    stages: tuple[Stage, ...]
    cost: Cost
    plan_id: PlanId
    optimal: bool = False  # proven optimal over the whole cluster (exact search, no pruning)

    @property
    def latency_ms(self) -> float:
        """Per-token latency, sequential execution."""
        return self.cost.latency_ns / NS_PER_MS

    @property
    def bottleneck_ms(self) -> float:
        """Slowest stage or transfer."""
        return self.cost.bottleneck_ns / NS_PER_MS

    @property
    def throughput_tps(self) -> float:
        """Tokens per second with the pipeline full."""
        return 1000.0 / self.bottleneck_ms if self.cost.bottleneck_ns else float("inf")

    def to_json(self) -> dict[str, Any]:
        """The `edgeshard plan --json` object."""
        return {
            "objective": self.objective,
            "strategy": self.strategy,
            "source": self.source,
            "stages": [stage.to_json() for stage in self.stages],
            "latency_ms": self.latency_ms,
            "bottleneck_ms": self.bottleneck_ms,
            "throughput_tps": self.throughput_tps,
            "plan_id": self.plan_id,
            "optimal": self.optimal,
        }


def check_stages(costs: CostModel, stages: Sequence[Stage]) -> None:
    """Raise InvalidPlanError unless the stages are a valid plan for this cluster."""
    if not stages:
        raise InvalidPlanError("a plan has at least one stage")
    position = 0
    used: set[DeviceId] = set()
    for stage in stages:
        if stage.device not in costs.index:
            raise InvalidPlanError(f"{stage.device!r} is not a device of this cluster")
        if stage.device in used:
            raise InvalidPlanError(f"{stage.device!r} hosts more than one stage")
        used.add(stage.device)
        if stage.start != position or stage.end <= stage.start:
            raise InvalidPlanError(f"stage {stage} does not continue at unit {position}")
        device = costs.index[stage.device]
        try:
            variant = costs.variant_of(device, stage.form)
        except ValueError:
            raise InvalidPlanError(f"{stage.device!r} offers no form {stage.form!r}") from None
        if not costs.fits(device, stage.start, stage.end, variant):
            raise InvalidPlanError(f"units [{stage.start}, {stage.end}) exceed {stage.device}'s memory")
        position = stage.end
    if position != costs.unit_count:
        raise InvalidPlanError(f"the stages cover units [0, {position}), not all {costs.unit_count}")
    source = costs.cluster.source
    if source is not None and stages[0].device != source:
        raise InvalidPlanError(f"stage 0 must run on the source {source!r}")


def stage_times(costs: CostModel, stages: Sequence[Stage]) -> tuple[list[int], list[int]]:
    """Per stage of a valid plan, ns per token: its compute, and the transfer out of it (to the
    next stage; from the last, back to the source, or to stage 0's device without one)."""
    check_stages(costs, stages)
    devices = [costs.index[stage.device] for stage in stages]
    compute = [
        costs.compute(d, s.start, s.end, costs.variant_of(d, s.form)) for d, s in zip(devices, stages, strict=True)
    ]
    transfer = [
        costs.transfer(previous, following, costs.out_bytes[stage.start - 1])
        for previous, following, stage in zip(devices, devices[1:], stages[1:], strict=False)
    ]
    transfer.append(costs.transfer(devices[-1], devices[0], costs.out_bytes[-1]))
    return compute, transfer


def evaluate(costs: CostModel, stages: Sequence[Stage]) -> Cost:
    """Latency and bottleneck of a valid plan, exactly as docs/ARCHITECTURE.md defines them."""
    compute, transfer = stage_times(costs, stages)
    times = compute + transfer
    return Cost(latency_ns=sum(times), bottleneck_ns=max(times))


def plan_id_for(cluster: Cluster, objective: Objective, strategy: str, stages: Sequence[Stage]) -> PlanId:
    """A stable hash of the inputs and the chosen plan (same on every machine)."""
    canonical = json.dumps(
        {
            "cluster": cluster.to_document(),
            "objective": objective,
            "strategy": strategy,
            "stages": [[s.device, s.start, s.end, *([s.form] if s.form else [])] for s in stages],
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return PlanId(hashlib.sha256(canonical.encode()).hexdigest()[:16])


def make_plan(
    costs: CostModel,
    objective: Objective,
    strategy: str,
    stages: Sequence[Stage],
    optimal: bool = False,
) -> Plan:
    """Evaluate stages into a Plan with its id."""
    stages = tuple(stages)
    return Plan(
        objective=objective,
        strategy=strategy,
        source=costs.cluster.source,
        stages=stages,
        cost=evaluate(costs, stages),
        plan_id=plan_id_for(costs.cluster, objective, strategy, stages),
        optimal=optimal,
    )
