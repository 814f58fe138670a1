"""The cost model of docs/ARCHITECTURE.md compiled into integer tables.

Every time is held in whole nanoseconds: sums and maxima are then exact, ties are real ties, and
every peer (whatever its CPU or Python build) computes bit-identical costs and so the same plan.
Rounding each profiled figure to 1 ns changes nothing a profile can resolve.
"""

from __future__ import annotations

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
    def device_bytes(self) -> tuple[tuple[int, ...], ...]:
        """device_bytes[d][j] - device_bytes[d][i] = memory of units [i, j) on device d (its own
        sizes when its weights take a form of their own, else the model's)."""
        model = tuple(unit.bytes for unit in self.cluster.model.units)
        tables = []
        for device in self.cluster.devices:
            prefix = [0]
            for size in device.unit_bytes or model:
                prefix.append(prefix[-1] + size)
            tables.append(tuple(prefix))
        return tuple(tables)

    @cached_property
    def bytes_prefix(self) -> tuple[int, ...]:
        """bytes_prefix[j] - bytes_prefix[i] = the least memory units [i, j) take on any device
        (each unit's smallest size): a bound the search prunes with, exact when all agree."""
        sizes = [unit.bytes for unit in self.cluster.model.units]
        for device in self.cluster.devices:
            if device.unit_bytes:
                sizes = [min(a, b) for a, b in zip(sizes, device.unit_bytes, strict=True)]
        prefix = [0]
        for size in sizes:
            prefix.append(prefix[-1] + size)
        return tuple(prefix)

    def unit_bytes(self, device: int, start: int, end: int) -> int:
        """Memory of units [start, end) on a device."""
        prefix = self.device_bytes[device]
        return prefix[end] - prefix[start]

    @cached_property
    def out_bytes(self) -> tuple[int, ...]:
        """What each unit sends on per token."""
        return tuple(unit.out_bytes for unit in self.cluster.model.units)

    @cached_property
    def compute_prefix(self) -> tuple[tuple[int, ...], ...]:
        """compute_prefix[d][j] - compute_prefix[d][i] = ns for device d to run units [i, j)."""
        tables = []
        for device in self.cluster.devices:
            prefix = [0]
            for ms in device.unit_ms:
                prefix.append(prefix[-1] + ms_to_ns(ms))
            tables.append(tuple(prefix))
        return tuple(tables)

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

    def compute(self, device: int, start: int, end: int) -> int:
        """ns for a device to run units [start, end) for one token."""
        prefix = self.compute_prefix[device]
        return prefix[end] - prefix[start]

    def fits(self, device: int, start: int, end: int) -> bool:
        """Whether units [start, end) fit in the device's memory."""
        return self.unit_bytes(device, start, end) <= self.memory[device]
