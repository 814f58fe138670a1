"""The membership view: gossiped records + failure detection; the dead leave, no ghosts.

Decide-then-act: `apply` and `sweep` are pure state transitions driven by the gossip loop
with explicit times. A dead peer's record is removed and a tombstone keeps its last clock, so
stale copies still circulating in gossip cannot bring it back; the peer itself comes back with a
newer clock (a higher heartbeat if it was only cut off, a higher incarnation after a restart).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .failure import FailurePolicy, Health, PhiAccrual
from .records import PeerId, PeerRecord, merge


@dataclass
class Membership:
    """One peer's view of the cluster."""

    own: PeerRecord
    policy: FailurePolicy = field(default_factory=FailurePolicy)
    records: dict[PeerId, PeerRecord] = field(default_factory=dict)
    detectors: dict[PeerId, PhiAccrual] = field(default_factory=dict)
    tombstones: dict[PeerId, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.records[self.own.peer_id] = self.own

    def beat(self) -> PeerRecord:
        """Advance our own heartbeat (once per gossip round)."""
        self.own = self.own.beat()
        self.records[self.own.peer_id] = self.own
        return self.own

    def apply(self, incoming: Iterable[PeerRecord], now: float) -> list[PeerId]:
        """Merge gossiped records; returns peers that joined or changed."""
        fresh = [
            r for r in incoming if r.peer_id != self.own.peer_id and r.clock > self.tombstones.get(r.peer_id, (-1, -1))
        ]
        self.records, changed = merge(self.records, fresh)
        for peer in changed:
            self.tombstones.pop(peer, None)
            self.detectors.setdefault(peer, PhiAccrual()).heartbeat(now)
        return changed

    def health(self, now: float) -> dict[PeerId, Health]:
        """Every known peer's health (we are always alive to ourselves)."""
        states: dict[PeerId, Health] = {self.own.peer_id: "alive"}
        for peer, detector in self.detectors.items():
            if peer in self.records:
                states[peer] = self.policy.health(detector, now)
        return states

    def sweep(self, now: float) -> list[PeerId]:
        """Remove peers declared dead; returns them."""
        dead = sorted(p for p, h in self.health(now).items() if h == "dead")
        for peer in dead:
            self.tombstones[peer] = self.records.pop(peer).clock
            del self.detectors[peer]
        return dead

    def view(self) -> list[PeerRecord]:
        """Live records sorted by peer id (the planner's input order)."""
        return [self.records[p] for p in sorted(self.records)]
