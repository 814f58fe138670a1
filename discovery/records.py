"""Capability records and their merge rule (pure; the gossip loop only carries them).

Theory of operation. Each peer owns one record about itself and bumps its `heartbeat` on every
gossip round; a restarted peer starts a higher `incarnation` (kept in its state directory, it
only goes up), so its new records win over anything the others still hold from its previous
life. Merging keeps, per peer, the record with the larger (incarnation, heartbeat): an
idempotent, commutative, associative rule, so push-pull anti-entropy converges whatever order
exchanges happen in. Records carry what the planner needs (memory, per-unit times, links) and
what routing needs (addresses, the plan a peer serves).

Every record is signed by its owner (`signing`): it travels as the bytes the owner signed plus
the signature and is forwarded unchanged. Decoding checks the signature, that the key hashes to
the peer id, and every field: numbers finite and in range, strings short, lists bounded. A
malformed record is the sender's fault (`RecordError`) and changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NewType
from urllib.parse import urlsplit

import msgpack

from .forms import FormFigures, form_name, forms_from_wire, forms_to_wire
from .signing import KEY_BYTES, SIGNATURE_BYTES, peer_id_of, verify
from .values import MAX_MEMORY, MAX_MS
from .values import integer as _integer
from .values import number as _number

PeerId = NewType("PeerId", str)
RECORD_VERSION = 2  # 2: signed records, key-derived ids, names
MAX_PEERS = 256  # records, links and obituaries a message or a view holds
MAX_UNITS = 4096
MAX_RECORD_BYTES = 64 * 1024
MAX_COUNTER = 2**62
MAX_MBPS = 1e6
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
PEER_ID = re.compile(r"[0-9a-f]{16}")
CERT = re.compile(r"[0-9a-f]{64}")


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
    pass_ms: float = 0.0  # what a pass costs beyond its units when the stage has been waiting
    unit_bytes: tuple[int, ...] = ()  # memory per unit on this device (its weight form), or ()
    form: str = ""  # the name of that weight form
    forms: tuple[FormFigures, ...] = ()  # the other forms it offers (discovery.forms)
    units_form: str = ""  # the form the units it serves are held in ("": its own)
    name: str = ""  # the label people gave the peer (--name); not unique, never trusted
    key: bytes = b""  # Ed25519 public key; the id is its hash
    cert: str = ""  # SHA-256 of the peer's TLS certificate (--tls), pinned by those who dial it
    version: int = RECORD_VERSION
    # The exact bytes the owner signed and the signature (empty until signed): what travels.
    signed: bytes = field(default=b"", compare=False, repr=False)
    signature: bytes = field(default=b"", compare=False, repr=False)

    @property
    def clock(self) -> tuple[int, int]:
        """The merge order: (incarnation, heartbeat)."""
        return self.incarnation, self.heartbeat

    @property
    def label(self) -> str:
        """What people call the peer: its name, else its id."""
        return self.name or self.peer_id

    def beat(self) -> PeerRecord:
        """The same record, one heartbeat later (unsigned until its owner signs it)."""
        return replace(self, heartbeat=self.heartbeat + 1, signed=b"", signature=b"")


def sign_record(record: PeerRecord, sign: Callable[[bytes], bytes]) -> PeerRecord:
    """The record with its owner's signature over its wire bytes."""
    data: bytes = msgpack.packb(_to_wire(record), use_bin_type=True)
    return replace(record, signed=data, signature=sign(data))


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
        "name": record.name,
        "key": record.key,
        "inc": record.incarnation,
        "hb": record.heartbeat,
        "addr": record.address,
        "cert": record.cert,
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
        "pass": record.pass_ms,
        "ub": list(record.unit_bytes),
        "fm": record.form,
        "fx": forms_to_wire(record.forms),
        "uf": record.units_form,
    }


def _signed(record: PeerRecord) -> list[bytes]:
    if not record.signed:
        raise ValueError(f"record of {record.peer_id} is not signed")
    return [record.signed, record.signature]


def encode_records(records: Iterable[PeerRecord]) -> bytes:
    """Signed records as msgpack bytes."""
    packed: bytes = msgpack.packb([_signed(r) for r in records], use_bin_type=True)
    return packed


Clock = tuple[int, int]


@dataclass(frozen=True)
class Exchange:
    """One push-pull message: the sender's digest, records the other side may lack, and death
    certificates: for each peer the sender *knows* is gone (its port refused a connection), the
    last record it held of it, so a certificate names one signed record and cannot claim more."""

    digest: dict[PeerId, Clock]
    records: list[PeerRecord]
    obituaries: list[PeerRecord]


def _clock_map(raw: Any, what: str) -> dict[PeerId, Clock]:
    if not isinstance(raw, dict) or len(raw) > MAX_PEERS:
        raise RecordError(f"{what} maps up to {MAX_PEERS} peer ids to [incarnation, heartbeat]")
    clocks: dict[PeerId, Clock] = {}
    for peer, clock in raw.items():
        if not (
            isinstance(peer, str)
            and len(peer) <= 64
            and isinstance(clock, list)
            and len(clock) == 2
            and all(_integer(x, 0, MAX_COUNTER) for x in clock)
        ):
            raise RecordError(f"{what} maps peer ids to [incarnation, heartbeat]")
        clocks[PeerId(peer)] = (clock[0], clock[1])
    return clocks


def encode_exchange(
    digest_: Mapping[PeerId, Clock], records: Iterable[PeerRecord], obituaries: Iterable[PeerRecord] = ()
) -> bytes:
    """One push-pull message as msgpack bytes."""
    body = {
        "d": {p: list(c) for p, c in digest_.items()},
        "r": [_signed(r) for r in records],
        "x": [_signed(r) for r in obituaries],
    }
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_array_len=MAX_UNITS,
            max_map_len=MAX_PEERS + 32,
            max_bin_len=MAX_RECORD_BYTES,
            max_str_len=MAX_RECORD_BYTES,
        )
    except Exception:  # msgpack raises many types for many malformations: all are the sender's
        raise RecordError("not msgpack") from None


def decode_exchange(data: bytes) -> Exchange:
    """Parse a push-pull message; RecordError on anything malformed or not signed by its owner."""
    body = _unpack(data)
    if not isinstance(body, dict) or not isinstance(body.get("r"), list):
        raise RecordError("an exchange is {d: digest, r: records, x: obituaries}")
    return Exchange(
        _clock_map(body.get("d"), "a digest"), _signed_records(body["r"]), _signed_records(body.get("x", []))
    )


def decode_records(data: bytes) -> list[PeerRecord]:
    """Parse signed records; RecordError on anything malformed, oversized or badly signed."""
    return _signed_records(_unpack(data))


def _signed_records(bodies: Any) -> list[PeerRecord]:
    if not isinstance(bodies, list) or len(bodies) > MAX_PEERS:
        raise RecordError(f"records are a list of at most {MAX_PEERS}")
    records = []
    for item in bodies:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], bytes)
            and isinstance(item[1], bytes)
            and len(item[1]) == SIGNATURE_BYTES
        ):
            raise RecordError("a record is [signed bytes, signature]")
        record = _parse(_unpack(item[0]))
        if not verify(record.key, item[1], item[0]):
            raise RecordError(f"record of {record.peer_id}: bad signature")
        records.append(replace(record, signed=item[0], signature=item[1]))
    return records


def _text(body: Mapping[str, Any], key: str, limit: int = 128, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise RecordError(f"record field {key!r}: text of at most {limit} printable characters")
    return value


def _numbers(body: Mapping[str, Any], key: str, low: float, high: float, limit: int = MAX_UNITS) -> tuple[float, ...]:
    values = body.get(key, [])
    if not (isinstance(values, list) and len(values) <= limit and all(_number(x, low, high) for x in values)):
        raise RecordError(f"record field {key!r}: up to {limit} finite numbers in [{low:g}, {high:g}]")
    return tuple(float(x) for x in values)


def _address(value: str) -> str:
    try:
        parts = urlsplit(value)
        ok = parts.scheme in {"http", "https"} and bool(parts.hostname) and parts.port is not None
        ok = ok and not (parts.path or parts.query or parts.fragment or parts.username)
    except ValueError:
        ok = False
    if not ok:
        raise RecordError(f"addr: http(s)://HOST:PORT, not {value[:64]!r}")
    return value


def _certificate(value: str) -> str:
    if value and not CERT.fullmatch(value):
        raise RecordError("cert: the SHA-256 of the peer's certificate, 64 hex digits")
    return value


def _parse(body: Any) -> PeerRecord:
    if not isinstance(body, dict):
        raise RecordError("a record is a map")
    key = body.get("key")
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise RecordError("key: an Ed25519 public key")
    peer_id = _text(body, "id", 64)
    if peer_id != peer_id_of(key):
        raise RecordError(f"id {peer_id[:20]!r} is not its key's")
    name = _text(body, "name", 63, "")
    if name and not NAME.fullmatch(name):
        raise RecordError("name: letters, digits, '.', '_', '-'")
    counters: list[int] = [body.get(k) for k in ("inc", "hb", "v")]  # type: ignore[misc]  # checked next
    if not all(_integer(x, 0, MAX_COUNTER) for x in counters):
        raise RecordError("inc, hb and v: counters")
    memory: int = body.get("mem")  # type: ignore[assignment]  # checked next
    if not _integer(memory, 0, MAX_MEMORY):
        raise RecordError(f"mem: bytes, at most {MAX_MEMORY}")
    unit_ms = _numbers(body, "unit_ms", 0.0, MAX_MS)
    prefill_ms = _numbers(body, "pre", 0.0, MAX_MS)
    if not unit_ms or not sum(unit_ms) > 0 or (prefill_ms and len(prefill_ms) != len(unit_ms)):
        raise RecordError("unit_ms: one time per unit, not all zero; pre: none or as many")
    links = body.get("links", [])
    if not isinstance(links, list) or len(links) > MAX_PEERS:
        raise RecordError(f"links: up to {MAX_PEERS}")
    measured = []
    for link in links:
        if not (
            isinstance(link, list)
            and len(link) == 3
            and isinstance(link[0], str)
            and PEER_ID.fullmatch(link[0])
            and _number(link[1], 1e-3, MAX_MBPS)
            and _number(link[2], 0.0, MAX_MS)
        ):
            raise RecordError("a link is [peer id, mbps > 0, rtt_ms >= 0]")
        measured.append(LinkMeasure(PeerId(link[0]), float(link[1]), float(link[2])))
    units = body.get("units", [])
    if not (
        isinstance(units, list)
        and len(units) in (0, 2)
        and all(_integer(x, 0, MAX_UNITS) for x in units)
        and (not units or units[0] < units[1])
    ):
        raise RecordError("units: [] or [start, end]")
    unit_bytes = body.get("ub", [])
    if not (
        isinstance(unit_bytes, list)
        and len(unit_bytes) in (0, len(unit_ms))
        and all(_integer(x, 1, MAX_MEMORY) for x in unit_bytes)
    ):
        raise RecordError("ub: none, or bytes per unit (as many as unit_ms)")
    source = body.get("src", False)
    if not isinstance(source, bool):
        raise RecordError("src: true or false")
    try:
        form = form_name(body.get("fm", ""), "fm")
        forms = forms_from_wire(body.get("fx", []), len(unit_ms), form)
        units_form = form_name(body.get("uf", ""), "uf")
    except ValueError as error:
        raise RecordError(str(error)) from None
    return PeerRecord(
        peer_id=PeerId(peer_id),
        incarnation=counters[0],
        heartbeat=counters[1],
        address=_address(_text(body, "addr", 256)),
        cluster=_text(body, "cluster"),
        model=_text(body, "model"),
        memory_bytes=memory,
        unit_ms=unit_ms,
        links=tuple(measured),
        serving=_text(body, "serving", 128, ""),
        source=source,
        prefill_ms=prefill_ms,
        settings=_text(body, "set", 256, ""),
        units=tuple(units),
        batch_scale=_numbers(body, "bs", 1e-6, 1e6, 16),
        pass_ms=_numbers({"pass": [body.get("pass", 0.0)]}, "pass", 0.0, MAX_MS, 1)[0],
        unit_bytes=tuple(unit_bytes),
        form=form,
        forms=forms,
        units_form=units_form,
        name=name,
        key=key,
        cert=_certificate(_text(body, "cert", 64, "")),
        version=counters[2],
    )
