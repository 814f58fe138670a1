"""From a membership view to a solver Cluster: the same view gives the same cluster everywhere.

Measured figures are noisy, and two identical devices never measure exactly alike, which would
keep the planner from treating them as one class (see solver.classes). So per-unit times are
rounded to `TIME_DIGITS` significant digits and memory down to `MEMORY_STEP`, and the devices
are sorted by peer id; a link's figures are the worse of the two directions' measurements.

Batch-aware costs (beyond the paper): a stage runs every ready session in one pass, and a pass of
b sessions takes `batch_factor(b)` times one session's (each peer measures its own curve). With
`batch` b, a device's per-unit times become the time per token inside a pass of b, t·f(b)/b, and a
link's latency is paid once per pass, so the planner's throughput objective balances the stages
as they really run, and a latency "plan" of that cluster costs one token of a b-session pass:
b sessions in step make 1/that tokens per second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from edgeshard.discovery.records import PeerId, PeerRecord
from edgeshard.solver import (
    Cluster,
    Device,
    DeviceId,
    Form,
    InvalidPlanError,
    Link,
    Model,
    Network,
    Plan,
    Stage,
    Unit,
    assess,
    stage_ms,
)

from ..model.batches import batch_factor
from ..pipeline.batcher import group_size
from .lifecycle import View
from .stability import served_stages

TIME_DIGITS = 2
MEMORY_STEP = 256 * 2**20
DEFAULT_MBPS = 100.0  # unmeasured links: a modest LAN
DEFAULT_LATENCY_MS = 1.0


def round_significant(value: float, digits: int = TIME_DIGITS) -> float:
    """value rounded to `digits` significant digits."""
    if value <= 0:
        return 0.0
    return round(value, digits - 1 - math.floor(math.log10(value)))


def _times(unit_ms: Sequence[float], batch_scale: Sequence[float], batch: int) -> tuple[float, ...]:
    """Per-unit ms per token inside a pass of `batch` sessions, rounded (see the module's doc)."""
    per_token = batch_factor(batch_scale, batch) / batch
    return tuple(round_significant(round_significant(ms) * per_token) for ms in unit_ms)


def cluster_from_view(
    records: Sequence[PeerRecord],
    model_name: str,
    units: Sequence[Unit],
    source: PeerId | None = None,
    batch: int = 1,
) -> Cluster:
    """The solver's cluster for the peers in the view (callers pass only compatible peers), with
    costs per token of a `batch`-session pass."""
    ordered = sorted(records, key=lambda r: r.peer_id)
    devices = []
    for r in ordered:
        memory = r.memory_bytes // MEMORY_STEP * MEMORY_STEP
        forms = tuple(Form(f.name, _times(f.unit_ms, f.batch_scale, batch), f.unit_bytes) for f in r.forms)
        times = _times(r.unit_ms, r.batch_scale, batch)
        pass_ms = round_significant(r.pass_ms) / batch  # once per pass
        devices.append(Device(DeviceId(r.peer_id), memory, times, r.unit_bytes, r.form, forms, pass_ms))
    measured: dict[tuple[str, str], tuple[float, float]] = {}
    for record in ordered:
        for link in record.links:
            measured[(record.peer_id, link.peer)] = (link.mbps, link.rtt_ms / 2 / batch)
    links = []
    ids = [r.peer_id for r in ordered]
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            both = [measured[k] for k in ((a, b), (b, a)) if k in measured]
            if both:
                mbps = round_significant(min(m for m, _ in both))
                latency = round_significant(max(ms for _, ms in both))
                links.append(Link(DeviceId(a), DeviceId(b), mbps, latency))
    return Cluster(
        model=Model(model_name, tuple(units)),
        devices=tuple(devices),
        network=Network(DEFAULT_MBPS, DEFAULT_LATENCY_MS, tuple(links)),
        source=DeviceId(source) if source is not None else None,
    )


def plannable(records: Sequence[PeerRecord], own: PeerRecord) -> tuple[list[PeerRecord], dict[PeerId, str]]:
    """The records that can share a plan with `own`, and why each other one cannot."""
    fit, excluded = [], {}
    for record in records:
        if record.model != own.model:
            excluded[record.peer_id] = f"runs another model file ({record.model[:12]}, ours {own.model[:12]})"
        elif record.settings != own.settings:
            # Every peer must size units and pick the objective alike, or views give different plans.
            excluded[record.peer_id] = f"plans with other settings ({record.settings}, ours {own.settings})"
        elif len(record.unit_ms) != len(own.unit_ms):
            excluded[record.peer_id] = "has no profile for this model yet"
        else:
            fit.append(record)
    return fit, excluded


def source_of(records: Sequence[PeerRecord]) -> PeerId | None:
    """The peer that hosts stage 0: the smallest id among those asking to (None: any)."""
    asking = sorted(r.peer_id for r in records if r.source)
    return asking[0] if asking else None


def view_of(
    records: Sequence[PeerRecord], own: PeerRecord, units: Sequence[Unit], departures: int, batch: int = 1
) -> tuple[View, dict[PeerId, str]]:
    """What this peer plans: the compatible peers' cluster (costs at `batch`), the layout they
    serve now; and why each other peer is left out."""
    fit, excluded = plannable(records, own)
    cluster = cluster_from_view(fit, own.model[:16], units, source_of(fit), batch)
    addresses = {record.peer_id: record.address for record in records}
    return View(cluster, addresses, own.model, departures, served_stages(fit, len(units))), excluded


def pipeline_groups(objective: str, stages: Sequence[Stage], addresses: Mapping[PeerId, str]) -> int:
    """Groups the sessions in flight form: on a throughput plan, one per host its stages run on
    (the paper's micro-batches, cut at the entry stage: peer.pipeline.batcher), else one.
    Stages on one host share its cores: groups overlapping there only split the batch (measured:
    3 local peers on 2 cores made 0.47-0.51x the tokens/s at 8 and 16 sessions cut in 3)."""
    if objective != "throughput":
        return 1
    hosts = {stage.device: urlsplit(addresses.get(PeerId(stage.device), "")).hostname for stage in stages}
    return len({host or device for device, host in hosts.items()})


def entry_groups(objective: str, stages: Sequence[Stage], addresses: Mapping[PeerId, str], own: str) -> int:
    """The groups this peer's batcher cuts its sessions into: only the entry stage cuts."""
    return pipeline_groups(objective, stages, addresses) if stages and stages[0].device == own else 1


def pipelined_tps(latency_ns: int, bottleneck_ns: int, sessions: int, size: int) -> float | None:
    """Tokens/s of `sessions` sessions in groups of `size`, from one token's costs in a pass of
    `size`: each group makes a token per trip round the stages (latency_ns per token), the groups
    overlap on separate devices, and no stage passes more than one token per bottleneck_ns."""
    if latency_ns <= 0:
        return None
    in_flight = sessions / size * 1e9 / latency_ns  # the groups' trips, overlapped
    return min(in_flight, 1e9 / bottleneck_ns) if bottleneck_ns > 0 else in_flight


def predicted_tps(
    records: Sequence[PeerRecord],
    own: PeerRecord,
    units: Sequence[Unit],
    stages: Sequence[Stage],
    groups: int,
    sessions: int,
) -> float | None:
    """Tokens per second that `sessions` sessions generating at once through `stages`, cut into
    `groups` groups, should make, from the measured costs (None when the stages are not a valid
    plan of this view). One group: every session in step, one pass per stage per token."""
    fit, _excluded = plannable(records, own)
    sessions = max(1, sessions)
    size = group_size(sessions, groups)
    cluster = cluster_from_view(fit, own.model[:16], units, source_of(fit), size)
    try:
        cost = assess(cluster, "latency", stages).cost
    except InvalidPlanError:
        return None
    return pipelined_tps(cost.latency_ns, cost.bottleneck_ns, sessions, size)


def predict_stages(
    plan: dict[str, Any], records: Sequence[PeerRecord], own: PeerRecord, units: Sequence[Unit], sessions: int
) -> None:
    """Put the planner's per-token figures on a status document's plan stages (costs of one
    token in a pass of `sessions`): `predicted_compute_ms`, and `predicted_transfer_ms` out of
    the stage; nothing when the stages are not a valid plan of this view."""
    fit, _excluded = plannable(records, own)
    cluster = cluster_from_view(fit, own.model[:16], units, source_of(fit), max(1, sessions))
    stages = [Stage(DeviceId(s["peer"]), s["start"], s["end"], s.get("form", "")) for s in plan["stages"]]
    try:
        compute, transfer = stage_ms(cluster, stages)
    except InvalidPlanError:
        return
    for stage, compute_ms, transfer_ms in zip(plan["stages"], compute, transfer, strict=True):
        stage["predicted_compute_ms"] = round(compute_ms, 3)
        stage["predicted_transfer_ms"] = round(transfer_ms, 3)


def add_predictions(
    plan: dict[str, Any],
    load: dict[str, Any],
    records: Sequence[PeerRecord],
    own: PeerRecord,
    units: Sequence[Unit],
    stages: Sequence[Stage],
    objective: str,
    capacity: int,
    batch: int,
) -> None:
    """The predictions set beside what a status document measures: tokens/s at the API's load
    and at its `capacity` (sessions), the groups the sessions form, the batch the plan is costed
    at, and each stage's figures for a token alone."""
    groups = pipeline_groups(objective, stages, {record.peer_id: record.address for record in records})
    load["predicted_tps"] = predicted_tps(records, own, units, stages, groups, load["generating"])
    load["predicted_tps_full"] = predicted_tps(records, own, units, stages, groups, capacity)
    plan["sessions_per_pass"] = batch  # what its costs are per token of
    plan["groups"] = groups
    predict_stages(plan, records, own, units, 1)


def describe_plan(plan: Plan, layout_id: str, peers: int, batch: int, names: Mapping[str, str] | None = None) -> str:
    """The log line of an adopted plan (`names`: what people call each peer id)."""
    names = names or {}
    stages = " → ".join(f"{names.get(s.device, s.device)}[{s.start}:{s.end}) {s.form}".rstrip() for s in plan.stages)
    if batch > 1:  # costs per token of a `batch`-session pass
        figures = f"predicted {plan.throughput_tps:.1f} tokens/s pipelined, {batch} sessions per pass"
    else:
        figures = f"predicted {plan.latency_ms:.1f} ms/token, {plan.throughput_tps:.1f} tokens/s pipelined"
    return f"plan {plan.plan_id}, layout {layout_id} ({plan.objective}, {peers} peers): {stages}; {figures}"


def route_problem(
    stages: Sequence[Stage] | None,
    records: Sequence[PeerRecord],
    own: str,
    route: Sequence[str],
    hop: int,
    origin: str,
    prefix: str,
) -> str | None:
    """Why a session's route or origin is refused (None: both are the layout's). A stage dials
    the next hop and the origin an `Open` names, so it dials only members: the stages of the
    layout it serves in order (`stages`; None while the adopted plan is another one: then any
    members), this peer (`own`) at the frame's hop, and an origin at a live member's address +
    `prefix`."""
    addresses = {str(record.peer_id): record.address for record in records}
    if stages is None:
        if not set(route) <= set(addresses.values()):
            return "the route names a host that is not a member"
    elif list(route) != [addresses.get(stage.device) for stage in stages]:
        return "the route is not the adopted layout's"
    elif not 0 <= hop < len(stages) or stages[hop].device != own:
        return "this stage is not at that hop of the route"
    if origin not in {address + prefix for address in addresses.values()}:
        return "the origin is not a member of this cluster"
    return None
