"""Capability records and their merge rule (pure; the gossip loop only carries them).

Theory of operation. Each peer owns one record about itself and bumps its `heartbeat` on every
gossip round; a restarted peer starts a higher `incarnation` (its start time), so its new
records win over anything the others still hold from its previous life. Merging keeps, per
peer, the record with the larger (incarnation, heartbeat): an idempotent, commutative,
associative rule, so push-pull anti-entropy converges whatever order exchanges happen in.
Records carry what the planner needs (memory, per-unit times, links) and what routing needs
(addresses, the plan a peer serves).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NewType

import msgpack

PeerId = NewType("PeerId", str)
RECORD_VERSION = 1


class RecordError(ValueError):
    """A gossiped record is malformed (the sender's fault)."""


@dataclass(frozen=True)
class LinkMeasure:
    """Measured link from the record's owner to another peer."""

    peer: PeerId
    mbps: float
    rtt_ms: float


@dataclass(frozen=True)
class PeerRecord:
    """What one peer says about itself."""

    peer_id: PeerId
    incarnation: int
    heartbeat: int
    address: str  # peer traffic (stages, gossip): http://host:port
    cluster: str
    model: str  # model fingerprint: peers of different models never share a plan
    memory_bytes: int
    unit_ms: tuple[float, ...]  # measured decode ms per unit (what the planner uses)
    links: tuple[LinkMeasure, ...] = ()
    serving: str = ""  # plan id this peer's shard is loaded for ("" while loading)
    source: bool = False  # this peer asks to host stage 0 (the requests' source device)
    prefill_ms: tuple[float, ...] = ()  # measured ms per unit for a 32-token prompt
    settings: str = ""  # what shapes the plan beyond the model (dtype, context, sessions, objective)
    units: tuple[int, ...] = ()  # (start, end) of the units held for `serving`, or ()
    batch_scale: tuple[float, ...] = ()  # a decode pass of 1, 2, 4, 8, 16 sessions over one's
    version: int = RECORD_VERSION

    @property
    def clock(self) -> tuple[int, int]:
        """The merge order: (incarnation, heartbeat)."""
        return self.incarnation, self.heartbeat

    def beat(self) -> PeerRecord:
        """The same record, one heartbeat later."""
        return replace(self, heartbeat=self.heartbeat + 1)


def merge(
    view: Mapping[PeerId, PeerRecord], incoming: Iterable[PeerRecord]
) -> tuple[dict[PeerId, PeerRecord], list[PeerId]]:
    """The merged view and the peers whose record changed (newer wins)."""
    merged = dict(view)
    changed: list[PeerId] = []
    for record in incoming:
        current = merged.get(record.peer_id)
        if current is None or record.clock > current.clock:
            merged[record.peer_id] = record
            changed.append(record.peer_id)
    return merged, changed


def digest(view: Mapping[PeerId, PeerRecord]) -> dict[PeerId, tuple[int, int]]:
    """What a push-pull exchange sends first: each known peer's clock."""
    return {peer: record.clock for peer, record in view.items()}


def newer_than(view: Mapping[PeerId, PeerRecord], theirs: Mapping[PeerId, tuple[int, int]]) -> list[PeerRecord]:
    """Records of ours that the holder of digest `theirs` lacks or has older."""
    return [r for peer, r in sorted(view.items()) if peer not in theirs or r.clock > tuple(theirs[peer])]


# --- codec -----------------------------------------------------------------------------------


def _to_wire(record: PeerRecord) -> dict[str, Any]:
    return {
        "v": record.version,
        "id": record.peer_id,
        "inc": record.incarnation,
        "hb": record.heartbeat,
        "addr": record.address,
        "cluster": record.cluster,
        "model": record.model,
        "mem": record.memory_bytes,
        "unit_ms": list(record.unit_ms),
        "links": [[k.peer, k.mbps, k.rtt_ms] for k in record.links],
        "serving": record.serving,
        "src": record.source,
        "pre": list(record.prefill_ms),
        "set": record.settings,
        "units": list(record.units),
        "bs": list(record.batch_scale),
    }


def encode_records(records: Iterable[PeerRecord]) -> bytes:
    """Records as msgpack bytes."""
    packed: bytes = msgpack.packb([_to_wire(r) for r in records], use_bin_type=True)
    return packed


Clock = tuple[int, int]


@dataclass(frozen=True)
class Exchange:
    """One push-pull message: the sender's digest, records the other side may lack, and death
    certificates (peers the sender *knows* are gone: their port refused a connection)."""

    digest: dict[PeerId, Clock]
    records: list[PeerRecord]
    obituaries: dict[PeerId, Clock]


def _clock_map(raw: Any, what: str) -> dict[PeerId, Clock]:
    if not isinstance(raw, dict):
        raise RecordError(f"{what} maps peer ids to [incarnation, heartbeat]")
    clocks: dict[PeerId, Clock] = {}
    for peer, clock in raw.items():
        if not (
            isinstance(peer, str)
            and isinstance(clock, list)
            and len(clock) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in clock)
        ):
            raise RecordError(f"{what} maps peer ids to [incarnation, heartbeat]")
        clocks[PeerId(peer)] = (clock[0], clock[1])
    return clocks


def encode_exchange(
    digest_: Mapping[PeerId, Clock], records: Iterable[PeerRecord], obituaries: Mapping[PeerId, Clock] | None = None
) -> bytes:
    """One push-pull message as msgpack bytes."""
    body = {
        "d": {p: list(c) for p, c in digest_.items()},
        "r": [_to_wire(r) for r in records],
        "x": {p: list(c) for p, c in (obituaries or {}).items()},
    }
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def decode_exchange(data: bytes, max_records: int = 1024) -> Exchange:
    """Parse a push-pull message; RecordError on anything malformed."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, max_array_len=4096, max_map_len=max_records)
    except Exception:
        raise RecordError("not msgpack") from None
    if not isinstance(body, dict) or not isinstance(body.get("r"), list):
        raise RecordError("an exchange is {d: digest, r: records, x: obituaries}")
    return Exchange(
        _clock_map(body.get("d"), "a digest"),
        _from_wire(body["r"], max_records),
        _clock_map(body.get("x", {}), "obituaries"),
    )


def _field(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise RecordError(f"record field {key!r} missing or of the wrong type")
    return value


def decode_records(data: bytes, max_records: int = 1024) -> list[PeerRecord]:
    """Parse gossiped records; RecordError on anything malformed or oversized."""
    try:
        bodies = msgpack.unpackb(data, raw=False, strict_map_key=True, max_array_len=4096)
    except Exception:
        raise RecordError("not msgpack") from None
    return _from_wire(bodies, max_records)


def _from_wire(bodies: Any, max_records: int, max_units: int = 4096) -> list[PeerRecord]:
    if not isinstance(bodies, list) or len(bodies) > max_records:
        raise RecordError("records are a list")
    records = []
    for body in bodies:
        if not isinstance(body, dict):
            raise RecordError("a record is a map")
        unit_ms = _field(body, "unit_ms", list)
        prefill_ms = body.get("pre", [])
        batch_scale = body.get("bs", [])
        links = _field(body, "links", list)
        if not isinstance(prefill_ms, list):
            raise RecordError("record field 'pre' of the wrong type")
        if not (
            isinstance(batch_scale, list)
            and len(batch_scale) <= 16
            and all(isinstance(x, int | float) and not isinstance(x, bool) and 0 < x < 1e6 for x in batch_scale)
        ):
            raise RecordError("bs: up to 16 positive numbers")
        if max(len(unit_ms), len(prefill_ms)) > max_units or len(links) > max_records:
            raise RecordError("record too large")
        if not all(isinstance(x, int | float) and not isinstance(x, bool) and x >= 0 for x in unit_ms + prefill_ms):
            raise RecordError("unit_ms and pre are non-negative numbers")
        measured = []
        for link in links:
            if not (
                isinstance(link, list)
                and len(link) == 3
                and isinstance(link[0], str)
                and all(isinstance(x, int | float) and not isinstance(x, bool) for x in link[1:])
            ):
                raise RecordError("a link is [peer, mbps, rtt_ms]")
            measured.append(LinkMeasure(PeerId(link[0]), float(link[1]), float(link[2])))
        units = body.get("units", [])
        if not (
            isinstance(units, list)
            and len(units) in (0, 2)
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= max_units for x in units)
            and (not units or units[0] < units[1])
        ):
            raise RecordError("units: [] or [start, end]")
        numbers = [_field(body, k, int) for k in ("inc", "hb", "mem")]
        if min(numbers) < 0:
            raise RecordError("counters and memory are non-negative")
        records.append(
            PeerRecord(
                peer_id=PeerId(_field(body, "id", str)[:128]),
                incarnation=numbers[0],
                heartbeat=numbers[1],
                address=_field(body, "addr", str)[:256],
                cluster=_field(body, "cluster", str)[:128],
                model=_field(body, "model", str)[:128],
                memory_bytes=numbers[2],
                unit_ms=tuple(float(x) for x in unit_ms),
                links=tuple(measured),
                serving=_field(body, "serving", str)[:128],
                source=body.get("src") is True,
                prefill_ms=tuple(float(x) for x in prefill_ms),
                settings=str(body.get("set", ""))[:128],
                units=tuple(units),
                batch_scale=tuple(float(x) for x in batch_scale),
                version=_field(body, "v", int),
            )
        )
    return records
