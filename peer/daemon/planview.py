"""From a membership view to a solver Cluster: the same view gives the same cluster everywhere.

Measured figures are noisy, and two identical devices never measure exactly alike, which would
keep the planner from treating them as one class (see solver.classes). So per-unit times are
rounded to `TIME_DIGITS` significant digits and memory down to `MEMORY_STEP`, and the devices
are sorted by peer id; a link's figures are the worse of the two directions' measurements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from edgeshard.discovery.records import PeerId, PeerRecord
from edgeshard.solver import Cluster, Device, DeviceId, Link, Model, Network, Unit

TIME_DIGITS = 2
MEMORY_STEP = 256 * 2**20
DEFAULT_MBPS = 100.0  # unmeasured links: a modest LAN
DEFAULT_LATENCY_MS = 1.0


def round_significant(value: float, digits: int = TIME_DIGITS) -> float:
    """value rounded to `digits` significant digits."""
    if value <= 0:
        return 0.0
    return round(value, digits - 1 - math.floor(math.log10(value)))


def cluster_from_view(
    records: Sequence[PeerRecord], model_name: str, units: Sequence[Unit], source: PeerId | None = None
) -> Cluster:
    """The solver's cluster for the peers in the view (callers pass only compatible peers)."""
    ordered = sorted(records, key=lambda r: r.peer_id)
    devices = tuple(
        Device(
            DeviceId(r.peer_id),
            r.memory_bytes // MEMORY_STEP * MEMORY_STEP,
            tuple(round_significant(ms) for ms in r.unit_ms),
        )
        for r in ordered
    )
    measured: dict[tuple[str, str], tuple[float, float]] = {}
    for record in ordered:
        for link in record.links:
            measured[(record.peer_id, link.peer)] = (link.mbps, link.rtt_ms / 2)
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
        devices=devices,
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
