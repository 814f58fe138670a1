"""Plans that hold still: a running layout is kept unless it broke or a new plan is clearly better.

Measured costs move (a link probe under load, a profile re-run), and every move would otherwise
re-plan and reload the cluster and fail over every session in flight. So the plan the peers
adopt is the *incumbent* (the layout the view's records say is served, end to end) unless it is
no longer valid for the view (a stage's peer left or can no longer hold its units) or the fresh
plan beats it by `MARGIN` on the objective, both costed on the same view. The incumbent is read
from the gossiped records, not from this peer's memory, so a peer that just joined reaches the
same decision as the peers that were there: the rule stays a function of the view.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from edgeshard.discovery.records import PeerRecord
from edgeshard.solver import Cluster, DeviceId, InvalidPlanError, Objective, Plan, Stage, assess

MARGIN = 0.10  # a new plan must be this much better (latency, or time per token pipelined)


def served_stages(records: Sequence[PeerRecord], unit_count: int) -> tuple[Stage, ...] | None:
    """The stages of the layout the records show served end to end, if there is one."""
    layouts: dict[str, list[Stage]] = defaultdict(list)
    for record in records:
        if record.serving and len(record.units) == 2:
            start, end = record.units
            layouts[record.serving].append(
                Stage(DeviceId(record.peer_id), start, end, record.units_form or record.form)
            )
    complete = []
    for layout, stages in sorted(layouts.items()):
        stages.sort(key=lambda stage: stage.start)
        bounds = [0] + [stage.end for stage in stages]
        if bounds[-1] == unit_count and all(s.start == b for s, b in zip(stages, bounds, strict=False)):
            complete.append((len(stages), layout, tuple(stages)))
    return min(complete)[2] if complete else None  # two complete layouts: a deterministic pick


def _objective_ns(plan: Plan) -> int:
    return plan.cost.latency_ns if plan.objective == "latency" else plan.cost.bottleneck_ns


def hold_still(cluster: Cluster, objective: Objective, fresh: Plan, incumbent: Sequence[Stage] | None) -> Plan:
    """`fresh` when there is no valid incumbent or fresh is better by MARGIN, else the incumbent
    costed on this cluster."""
    if not incumbent or tuple(incumbent) == fresh.stages:
        return fresh
    try:
        kept = assess(cluster, objective, incumbent)
    except InvalidPlanError:
        return fresh  # the running layout broke: a stage's peer left or no longer fits
    if _objective_ns(fresh) <= (1.0 - MARGIN) * _objective_ns(kept):
        return fresh
    return kept
