"""The status document of a peer (`GET /v1/status`, `edgeshard status`), built from plain data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgeshard.discovery.failure import Health
from edgeshard.discovery.records import PeerId, PeerRecord

from ..pipeline.layouts import ReadyLayout
from .identity import Identity
from .lifecycle import State


def status_document(
    identity: Identity,
    uptime_s: float,
    state: State,
    route: ReadyLayout | str,
    records: Sequence[PeerRecord],
    health: Mapping[PeerId, Health],
    excluded: Mapping[PeerId, str],
    shard: Mapping[str, Any],
) -> dict[str, Any]:
    """This peer's view, plan and readiness."""
    config = identity.config
    by_peer = {record.peer_id: record for record in records}
    own = by_peer[identity.peer_id]
    plan_json: dict[str, Any] | None = None
    if state.adopted is not None:
        plan_json = state.adopted.plan.to_json() | {"layout_id": state.adopted.layout_id}
        for stage in plan_json["stages"]:
            record = by_peer.get(PeerId(stage["device"]))
            # "device" is what people call it; "peer" the id it is known by (its key's hash).
            stage["peer"], stage["device"] = stage["device"], record.label if record else stage["device"]
            stage["address"] = record.address if record else None
            stage["serving"] = record.serving == state.adopted.layout_id if record else False
    ready = isinstance(route, ReadyLayout)
    return {
        "peer": identity.peer_id,
        "name": config.label,
        "address": identity.address,
        "cluster": config.cluster,
        "model": {"spec": config.model, "fingerprint": own.model},
        "device": identity.device,
        "weights": identity.form,  # the form it holds units in unless a plan chooses another
        "weights_offered": [own.form or identity.form, *(form.name for form in own.forms)],
        "uptime_s": round(uptime_s, 1),
        "phase": state.phase,
        "ready": ready,
        "reason": None if ready else route,
        "plan": plan_json,
        "serving": own.serving,
        "shard": dict(shard),
        "peers": [
            {
                "id": record.peer_id,
                "name": record.label,
                "address": record.address,
                "health": health.get(record.peer_id, "alive"),
                "serving": record.serving,
                "memory_bytes": record.memory_bytes,
                "ms_per_token_alone": round(sum(record.unit_ms), 3),
                "prefill_ms_alone": round(sum(record.prefill_ms), 3),
                "source": record.source,
                "excluded": excluded.get(record.peer_id),
                "links": [
                    {"peer": k.peer, "name": by_peer[k.peer].label if k.peer in by_peer else k.peer}
                    | {"mbps": k.mbps, "rtt_ms": k.rtt_ms}
                    for k in record.links
                ],
            }
            for record in records
        ],
    }
