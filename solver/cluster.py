"""The cluster a plan is made for: model units, devices, source, network (plain frozen data).

The JSON/TOML cluster file (format version 1) maps one to one onto these classes; `parse_cluster`
validates a decoded document and names the offending field in every error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NewType

from .errors import ClusterFileError

DeviceId = NewType("DeviceId", str)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Unit:
    """One unit of the model chain: embedding, a decoder layer, or norm + head."""

    name: str
    bytes: int  # resident memory on its device
    out_bytes: int  # what it sends to the next unit per token


@dataclass(frozen=True)
class Model:
    """A model as a chain of units."""

    name: str
    units: tuple[Unit, ...]

    @property
    def total_bytes(self) -> int:
        """Memory of all units together."""
        return sum(unit.bytes for unit in self.units)


@dataclass(frozen=True)
class Device:
    """A device: usable memory and its decode time per unit (ms per token)."""

    id: DeviceId
    memory_bytes: int
    unit_ms: tuple[float, ...]
    # What each unit takes on this device, when its weights are held in a form of their own
    # (a device with int4 weights holds a layer in a fraction of the bytes); () = the model's.
    unit_bytes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Link:
    """A symmetric link between two devices."""

    a: DeviceId
    b: DeviceId
    mbps: float
    latency_ms: float


@dataclass(frozen=True)
class Network:
    """Default link figures plus per-pair overrides."""

    default_mbps: float
    default_latency_ms: float
    links: tuple[Link, ...] = ()

    def link(self, a: DeviceId, b: DeviceId) -> tuple[float, float]:
        """(mbps, latency_ms) between two distinct devices."""
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link.mbps, link.latency_ms
        return self.default_mbps, self.default_latency_ms


@dataclass(frozen=True)
class Cluster:
    """Everything the planner needs."""

    model: Model
    devices: tuple[Device, ...]
    network: Network
    source: DeviceId | None = None

    def device(self, device_id: DeviceId) -> Device:
        """The device with this id."""
        for device in self.devices:
            if device.id == device_id:
                return device
        raise KeyError(device_id)

    def to_document(self) -> dict[str, Any]:
        """The cluster as a format-1 JSON document (canonical: the input to plan ids)."""
        document: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "model": {
                "name": self.model.name,
                "units": [{"name": u.name, "bytes": u.bytes, "out_bytes": u.out_bytes} for u in self.model.units],
            },
            "devices": [_device_document(d) for d in self.devices],
            "network": {
                "default_mbps": self.network.default_mbps,
                "default_latency_ms": self.network.default_latency_ms,
                "links": [{"a": k.a, "b": k.b, "mbps": k.mbps, "latency_ms": k.latency_ms} for k in self.network.links],
            },
        }
        if self.source is not None:
            document["source"] = self.source
        return document


# --- parsing -------------------------------------------------------------------------------


def _fields(value: Any, path: str, required: set[str], optional: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ClusterFileError(path, "must be an object")
    unknown = sorted(set(value) - required - optional)
    if unknown:
        raise ClusterFileError(f"{path}.{unknown[0]}" if path else unknown[0], "unknown field")
    missing = sorted(required - set(value))
    if missing:
        raise ClusterFileError(f"{path}.{missing[0]}" if path else missing[0], "missing")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ClusterFileError(path, "must be a non-empty string")
    return value


def _integer(value: Any, path: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClusterFileError(path, "must be a number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ClusterFileError(path, "must be a whole number of bytes")
        value = int(value)
    if value < minimum:
        raise ClusterFileError(path, f"must be >= {minimum}")
    return int(value)


def _number(value: Any, path: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClusterFileError(path, "must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise ClusterFileError(path, "must be finite")
    if number < 0 or (positive and number == 0):
        raise ClusterFileError(path, "must be > 0" if positive else "must be >= 0")
    return number


def _list(value: Any, path: str, nonempty: bool = True) -> Sequence[Any]:
    if not isinstance(value, list):
        raise ClusterFileError(path, "must be a list")
    if nonempty and not value:
        raise ClusterFileError(path, "must not be empty")
    return value


def parse_cluster(document: Any) -> Cluster:
    """Validate a decoded cluster document and build the `Cluster`."""
    top = _fields(document, "", {"model", "devices", "network"}, {"version", "source"})
    version = top.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ClusterFileError("version", f"unsupported version {version!r} (this reads {FORMAT_VERSION})")

    model_doc = _fields(top["model"], "model", {"name", "units"}, set())
    units = []
    for index, raw in enumerate(_list(model_doc["units"], "model.units")):
        path = f"model.units[{index}]"
        unit_doc = _fields(raw, path, {"name", "bytes", "out_bytes"}, set())
        units.append(
            Unit(
                name=_string(unit_doc["name"], f"{path}.name"),
                bytes=_integer(unit_doc["bytes"], f"{path}.bytes"),
                out_bytes=_integer(unit_doc["out_bytes"], f"{path}.out_bytes"),
            )
        )
    model = Model(name=_string(model_doc["name"], "model.name"), units=tuple(units))

    devices: list[Device] = []
    seen: set[str] = set()
    for index, raw in enumerate(_list(top["devices"], "devices")):
        path = f"devices[{index}]"
        device_doc = _fields(raw, path, {"id", "memory_bytes", "unit_ms"}, {"unit_bytes"})
        device_id = _string(device_doc["id"], f"{path}.id")
        if device_id in seen:
            raise ClusterFileError(f"{path}.id", f"duplicate device id {device_id!r}")
        seen.add(device_id)
        unit_ms = _list(device_doc["unit_ms"], f"{path}.unit_ms")
        if len(unit_ms) != len(units):
            raise ClusterFileError(f"{path}.unit_ms", f"has {len(unit_ms)} entries, the model has {len(units)} units")
        unit_bytes = _list(device_doc.get("unit_bytes", []), f"{path}.unit_bytes", nonempty=False)
        if unit_bytes and len(unit_bytes) != len(units):
            raise ClusterFileError(f"{path}.unit_bytes", f"has {len(unit_bytes)} entries, the model has {len(units)}")
        devices.append(
            Device(
                id=DeviceId(device_id),
                memory_bytes=_integer(device_doc["memory_bytes"], f"{path}.memory_bytes"),
                unit_ms=tuple(_number(ms, f"{path}.unit_ms[{i}]") for i, ms in enumerate(unit_ms)),
                unit_bytes=tuple(_integer(b, f"{path}.unit_bytes[{i}]") for i, b in enumerate(unit_bytes)),
            )
        )

    net_doc = _fields(top["network"], "network", {"default_mbps", "default_latency_ms"}, {"links"})
    links: list[Link] = []
    pairs: set[frozenset[str]] = set()
    for index, raw in enumerate(_list(net_doc.get("links", []), "network.links", nonempty=False)):
        path = f"network.links[{index}]"
        link_doc = _fields(raw, path, {"a", "b", "mbps", "latency_ms"}, set())
        a, b = _string(link_doc["a"], f"{path}.a"), _string(link_doc["b"], f"{path}.b")
        for end, name in (("a", a), ("b", b)):
            if name not in seen:
                raise ClusterFileError(f"{path}.{end}", f"{name!r} is not a device")
        if a == b:
            raise ClusterFileError(path, "a link joins two different devices")
        if frozenset((a, b)) in pairs:
            raise ClusterFileError(path, f"duplicate link {a!r}-{b!r}")
        pairs.add(frozenset((a, b)))
        links.append(
            Link(
                a=DeviceId(a),
                b=DeviceId(b),
                mbps=_number(link_doc["mbps"], f"{path}.mbps", positive=True),
                latency_ms=_number(link_doc["latency_ms"], f"{path}.latency_ms"),
            )
        )
    network = Network(
        default_mbps=_number(net_doc["default_mbps"], "network.default_mbps", positive=True),
        default_latency_ms=_number(net_doc["default_latency_ms"], "network.default_latency_ms"),
        links=tuple(links),
    )

    source = top.get("source")
    if source is not None:
        source = _string(source, "source")
        if source not in seen:
            raise ClusterFileError("source", f"{source!r} is not a device")
    return Cluster(
        model=model,
        devices=tuple(devices),
        network=network,
        source=DeviceId(source) if source is not None else None,
    )


def _device_document(device: Device) -> dict[str, Any]:
    document: dict[str, Any] = {"id": device.id, "memory_bytes": device.memory_bytes, "unit_ms": list(device.unit_ms)}
    if device.unit_bytes:  # absent when the model's sizes hold: plan ids of such clusters stay as they were
        document["unit_bytes"] = list(device.unit_bytes)
    return document
