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
class Form:
    """One way a device can hold units (a weight form): its time and size per unit."""

    name: str
    unit_ms: tuple[float, ...]
    unit_bytes: tuple[int, ...] = ()  # () = the model's sizes


@dataclass(frozen=True)
class Device:
    """A device: usable memory and its decode time per unit (ms per token)."""

    id: DeviceId
    memory_bytes: int
    unit_ms: tuple[float, ...]
    # What each unit takes on this device, when its weights are held in a form of their own
    # (a device with int4 weights holds a layer in a fraction of the bytes); () = the model's.
    unit_bytes: tuple[int, ...] = ()
    form: str = ""  # the name of that form ("" where only one is offered)
    # Other forms the device offers: each stage takes the fastest one of the device that holds its
    # units, so a device short of memory can trade speed for size.
    forms: tuple[Form, ...] = ()
    # What every stage on this device costs beyond its units, in any form: the compute threads
    # waking after the stage waited for its next pass (measured, peer/model/profile.py).
    pass_ms: float = 0.0

    def variants(self) -> tuple[Form, ...]:
        """Every form the device offers, its own first."""
        return (Form(self.form, self.unit_ms, self.unit_bytes), *self.forms)


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
        device_doc = _fields(raw, path, {"id", "memory_bytes", "unit_ms"}, {"unit_bytes", "form", "forms", "pass_ms"})
        device_id = _string(device_doc["id"], f"{path}.id")
        if device_id in seen:
            raise ClusterFileError(f"{path}.id", f"duplicate device id {device_id!r}")
        seen.add(device_id)
        own = _form(device_doc, path, len(units), "form")
        forms: list[Form] = []
        for number, form_doc in enumerate(_list(device_doc.get("forms", []), f"{path}.forms", nonempty=False)):
            where = f"{path}.forms[{number}]"
            form = _form(_fields(form_doc, where, {"name", "unit_ms"}, {"unit_bytes"}), where, len(units), "name")
            if form.name in {own.name, *(f.name for f in forms)} or not form.name:
                raise ClusterFileError(f"{where}.name", "must be a name of its own, unlike the device's other forms")
            forms.append(form)
        devices.append(
            Device(
                id=DeviceId(device_id),
                memory_bytes=_integer(device_doc["memory_bytes"], f"{path}.memory_bytes"),
                unit_ms=own.unit_ms,
                unit_bytes=own.unit_bytes,
                form=own.name,
                forms=tuple(forms),
                pass_ms=_number(device_doc.get("pass_ms", 0.0), f"{path}.pass_ms"),
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


def _form(document: Mapping[str, Any], path: str, units: int, name_key: str) -> Form:
    """A form's name, times and sizes (a device's own: name under "form", all optional but times)."""
    name = document.get(name_key, "")
    if not isinstance(name, str):
        raise ClusterFileError(f"{path}.{name_key}", "must be a string")
    unit_ms = _list(document["unit_ms"], f"{path}.unit_ms")
    if len(unit_ms) != units:
        raise ClusterFileError(f"{path}.unit_ms", f"has {len(unit_ms)} entries, the model has {units} units")
    unit_bytes = _list(document.get("unit_bytes", []), f"{path}.unit_bytes", nonempty=False)
    if unit_bytes and len(unit_bytes) != units:
        raise ClusterFileError(f"{path}.unit_bytes", f"has {len(unit_bytes)} entries, the model has {units}")
    return Form(
        name,
        tuple(_number(ms, f"{path}.unit_ms[{i}]") for i, ms in enumerate(unit_ms)),
        tuple(_integer(b, f"{path}.unit_bytes[{i}]") for i, b in enumerate(unit_bytes)),
    )


def _form_document(form: Form, name_key: str) -> dict[str, Any]:
    # Fields absent at their defaults: plan ids of clusters without them stay as they were.
    document: dict[str, Any] = {name_key: form.name} if form.name else {}
    document["unit_ms"] = list(form.unit_ms)
    if form.unit_bytes:
        document["unit_bytes"] = list(form.unit_bytes)
    return document


def _device_document(device: Device) -> dict[str, Any]:
    own, *others = device.variants()
    document: dict[str, Any] = {"id": device.id, "memory_bytes": device.memory_bytes, **_form_document(own, "form")}
    if others:
        document["forms"] = [_form_document(form, "name") for form in others]
    if device.pass_ms:
        document["pass_ms"] = device.pass_ms
    return document
