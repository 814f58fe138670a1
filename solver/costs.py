"""The cost model of docs/ARCHITECTURE.md compiled into integer tables.

Every time is held in whole nanoseconds: sums and maxima are then exact, ties are real ties, and
every peer (whatever its CPU or Python build) computes bit-identical costs and so the same plan.
Rounding each profiled figure to 1 ns changes nothing a profile can resolve.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from .cluster import Cluster, DeviceId

NS_PER_MS = 1_000_000


def ms_to_ns(ms: float) -> int:
    """Milliseconds to whole nanoseconds."""
    return round(ms * NS_PER_MS)


def transfer_ns(nbytes: int, mbps: float, latency_ms: float) -> int:
    """bytes·8 / (mbps·10⁶) s + link latency, in ns."""
    return round(nbytes * 8_000 / mbps) + ms_to_ns(latency_ms)


def _prefix(values: Iterable[int]) -> tuple[int, ...]:
    prefix = [0]
    for value in values:
        prefix.append(prefix[-1] + value)
    return tuple(prefix)


@dataclass(frozen=True)
class Variant:
    """One form a device offers, as prefix tables: [i, j) takes table[j] - table[i]."""

    name: str
    compute_prefix: tuple[int, ...]  # ns
    bytes_prefix: tuple[int, ...]


@dataclass(frozen=True)
class CostModel:
    """Integer cost tables for one cluster; devices are addressed by their index in `ids`."""

    cluster: Cluster

    @cached_property
    def ids(self) -> tuple[DeviceId, ...]:
        """Device ids in file order."""
        return tuple(device.id for device in self.cluster.devices)

    @cached_property
    def index(self) -> dict[DeviceId, int]:
        """Device id to index."""
        return {device_id: i for i, device_id in enumerate(self.ids)}

    @property
    def unit_count(self) -> int:
        """Number of units in the chain."""
        return len(self.cluster.model.units)

    @cached_property
    def source(self) -> int | None:
        """Index of the source device, if one is pinned."""
        return None if self.cluster.source is None else self.index[self.cluster.source]

    @cached_property
    def variants(self) -> tuple[tuple[Variant, ...], ...]:
        """Per device, each form it offers (its own first) as prefix tables."""
        model = tuple(unit.bytes for unit in self.cluster.model.units)
        return tuple(
            tuple(
                Variant(form.name, _prefix(map(ms_to_ns, form.unit_ms)), _prefix(form.unit_bytes or model))
                for form in device.variants()
            )
            for device in self.cluster.devices
        )

    @cached_property
    def bytes_prefix(self) -> tuple[int, ...]:
        """bytes_prefix[j] - bytes_prefix[i] = the least memory units [i, j) take on any device
        in any form (each unit's smallest size): a bound the search prunes with, exact when all agree."""
        tables = [variant.bytes_prefix for variants in self.variants for variant in variants]
        sizes = [min(table[i + 1] - table[i] for table in tables) for i in range(self.unit_count)]
        return _prefix(sizes)

    def unit_bytes(self, device: int, start: int, end: int, variant: int = 0) -> int:
        """Memory of units [start, end) on a device, in one of its forms."""
        prefix = self.variants[device][variant].bytes_prefix
        return prefix[end] - prefix[start]

    def variant_of(self, device: int, form: str) -> int:
        """The index of a device's form by name ("" is its own form); ValueError if it has none such."""
        if form == "":
            return 0
        return [variant.name for variant in self.variants[device]].index(form)

    def choose(self, device: int, start: int, end: int, cap: int | None = None) -> int | None:
        """The device's fastest form that holds units [start, end) (within `cap` ns, if given;
        ties: the earlier listed), or None when none does."""
        best: tuple[int, int] | None = None
        for index, variant in enumerate(self.variants[device]):
            ns = variant.compute_prefix[end] - variant.compute_prefix[start] + self.pass_ns[device]
            size = variant.bytes_prefix[end] - variant.bytes_prefix[start]
            if size <= self.memory[device] and (cap is None or ns <= cap) and (best is None or ns < best[0]):
                best = (ns, index)
        return None if best is None else best[1]

    @cached_property
    def pass_ns(self) -> tuple[int, ...]:
        """Per device, what any stage on it costs beyond its units (`Device.pass_ms`)."""
        return tuple(ms_to_ns(device.pass_ms) for device in self.cluster.devices)

    @cached_property
    def out_bytes(self) -> tuple[int, ...]:
        """What each unit sends on per token."""
        return tuple(unit.out_bytes for unit in self.cluster.model.units)

    @cached_property
    def memory(self) -> tuple[int, ...]:
        """Usable memory per device."""
        return tuple(device.memory_bytes for device in self.cluster.devices)

    @cached_property
    def _links(self) -> dict[tuple[int, int], tuple[float, float]]:
        table: dict[tuple[int, int], tuple[float, float]] = {}
        for link in self.cluster.network.links:
            a, b = self.index[link.a], self.index[link.b]
            table[(a, b)] = table[(b, a)] = (link.mbps, link.latency_ms)
        return table

    def link(self, a: int, b: int) -> tuple[float, float]:
        """(mbps, latency_ms) between two distinct devices."""
        network = self.cluster.network
        return self._links.get((a, b), (network.default_mbps, network.default_latency_ms))

    def transfer(self, a: int, b: int, nbytes: int) -> int:
        """ns to send nbytes from device a to device b (0 on the same device)."""
        if a == b:
            return 0
        mbps, latency_ms = self.link(a, b)
        return transfer_ns(nbytes, mbps, latency_ms)

    def compute(self, device: int, start: int, end: int, variant: int = 0) -> int:
        """ns for a device to run units [start, end) for one token, in one of its forms."""
        prefix = self.variants[device][variant].compute_prefix
        return prefix[end] - prefix[start] + (self.pass_ns[device] if end > start else 0)

    def fits(self, device: int, start: int, end: int, variant: int | None = None) -> bool:
        """Whether units [start, end) fit in the device's memory (in that form; None: in any)."""
        if variant is None:
            return self.choose(device, start, end) is not None
        return self.unit_bytes(device, start, end, variant) <= self.memory[device]
