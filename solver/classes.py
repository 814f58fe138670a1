"""Group devices that are interchangeable in every plan.

Two devices are interchangeable when they have the same memory and forms (per-unit times and
sizes, by name), the same
link to every third device, and (inside a group of more than two) the same link to each other.
Swapping them in any plan leaves every cost unchanged, so the exact search only has to decide
how many devices of each class to use, not which: a cluster of 12 identical AGX Orins is one
class with a count, not 2¹² subsets. The source is always a class of its own (it is pinned).
"""

from __future__ import annotations

from dataclasses import dataclass

from .costs import CostModel


@dataclass(frozen=True)
class DeviceClass:
    """Interchangeable devices, listed by index in id order (the order plans take them in)."""

    members: tuple[int, ...]

    @property
    def representative(self) -> int:
        """The member whose tables stand for the class."""
        return self.members[0]

    @property
    def size(self) -> int:
        """How many devices the class holds."""
        return len(self.members)


def _same_profile(costs: CostModel, a: int, b: int) -> bool:
    same_costs = costs.variants[a] == costs.variants[b] and costs.pass_ns[a] == costs.pass_ns[b]
    return costs.memory[a] == costs.memory[b] and same_costs


def _interchangeable(costs: CostModel, universe: list[int], members: list[int], candidate: int) -> bool:
    representative = members[0]
    if not _same_profile(costs, representative, candidate):
        return False
    inside = set(members) | {candidate}
    for other in universe:
        if other not in inside and costs.link(representative, other) != costs.link(candidate, other):
            return False
    # All links inside the class must be one value: the cost of a hop between two members.
    inner = {costs.link(member, candidate) for member in members}
    if len(members) > 1:
        inner.add(costs.link(members[0], members[1]))
    return len(inner) == 1


def device_classes(costs: CostModel, devices: list[int] | None = None) -> list[DeviceClass]:
    """Partition the given devices (default: all) into classes, deterministically."""
    order = sorted(devices if devices is not None else range(len(costs.ids)), key=lambda d: costs.ids[d])
    groups: list[list[int]] = []
    for device in order:
        if device != costs.source:
            for group in groups:
                if group[0] != costs.source and _interchangeable(costs, order, group, device):
                    group.append(device)
                    break
            else:
                groups.append([device])
        else:
            groups.append([device])
    return [DeviceClass(tuple(group)) for group in groups]
