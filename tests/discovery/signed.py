"""Test helpers: peers with real keys, and records signed by them."""

from __future__ import annotations

import functools

from edgeshard.discovery.records import PeerId, PeerRecord, sign_record
from edgeshard.discovery.signing import Signer


@functools.cache
def signer(name: str) -> Signer:
    """One key per name, for the whole test session."""
    return Signer()


def peer(name: str) -> PeerId:
    """The id of the peer called `name`."""
    return PeerId(signer(name).peer_id)


def record(peer_id: str, /, incarnation: int = 1, heartbeat: int = 0, **changes: object) -> PeerRecord:
    """A valid record (unsigned: for the pure logic that never decodes it)."""
    fields: dict[str, object] = dict(
        peer_id=PeerId(peer_id),
        incarnation=incarnation,
        heartbeat=heartbeat,
        address=f"http://{peer_id}:7420",
        cluster="home",
        model="abc",
        memory_bytes=2**30,
        unit_ms=(0.1, 2.0, 2.0, 1.0),
    )
    fields.update(changes)
    return PeerRecord(**fields)  # type: ignore[arg-type]


def signed(who: str, /, incarnation: int = 1, heartbeat: int = 0, **changes: object) -> PeerRecord:
    """A valid record of the peer called `who`, signed by its key."""
    key = signer(who)
    fields: dict[str, object] = {"peer_id": peer(who), "address": f"http://{who}.local:7420", "name": who}
    fields |= {"key": key.public_key, **changes}
    return sign_record(record(who, incarnation, heartbeat, **fields), key.sign)
