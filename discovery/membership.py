"""The membership view: gossiped records + failure detection; the dead leave, no ghosts.

Decide-then-act: `apply` and `sweep` are pure state transitions driven by the gossip loop
with explicit times. A dead peer's record is removed and a tombstone keeps its last clock, so
stale copies still circulating in gossip cannot bring it back; the peer itself comes back with a
newer clock (a higher heartbeat if it was only cut off, a higher incarnation after a restart).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

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
    # Deaths this peer confirmed or learnt of (a refused connection, not mere silence): gossiped,
    # so every view drops the peer at once instead of each waiting out `dead_after_s`.
    obituaries: dict[PeerId, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.records[self.own.peer_id] = self.own

    def beat(self) -> PeerRecord:
        """Advance our own heartbeat (once per gossip round)."""
        self.own = self.own.beat()
        self.records[self.own.peer_id] = self.own
        return self.own

    def announce(self, **changes: object) -> PeerRecord:
        """Change our own record (e.g. the plan we serve); the next beat carries it."""
        self.own = replace(self.own, **changes)  # type: ignore[arg-type]
        return self.beat()

    def apply(self, incoming: Iterable[PeerRecord], now: float) -> list[PeerId]:
        """Merge gossiped records (those of our cluster); returns peers that joined or changed."""
        fresh = [
            r
            for r in incoming
            if r.peer_id != self.own.peer_id
            and r.cluster == self.own.cluster
            and r.clock > self.tombstones.get(r.peer_id, (-1, -1))
        ]
        self.records, changed = merge(self.records, fresh)
        for peer in changed:
            self.tombstones.pop(peer, None)
            self.obituaries.pop(peer, None)
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
            self._remove(peer)
        return dead

    def _remove(self, peer: PeerId) -> None:
        self.tombstones[peer] = self.records.pop(peer).clock
        self.detectors.pop(peer, None)

    def confirm_dead(self, peer: PeerId) -> bool:
        """We know `peer` is gone (its port refused us): drop it and certify the death."""
        if peer == self.own.peer_id or peer not in self.records:
            return False
        self.obituaries[peer] = self.records[peer].clock
        self._remove(peer)
        return True

    def bury(self, obituaries: dict[PeerId, tuple[int, int]]) -> list[PeerId]:
        """Apply gossiped death certificates; a record newer than the certificate survives
        (the peer restarted or was alive after all). Returns the peers removed."""
        buried = []
        for peer, clock in sorted(obituaries.items()):
            if peer == self.own.peer_id:
                continue
            if peer in self.records and self.records[peer].clock <= clock:
                self._remove(peer)
                buried.append(peer)
            if peer not in self.records and clock > self.obituaries.get(peer, (-1, -1)):
                self.obituaries[peer] = clock  # pass the certificate on
                self.tombstones[peer] = max(clock, self.tombstones.get(peer, (-1, -1)))
        return buried

    def view(self) -> list[PeerRecord]:
        """Live records sorted by peer id (the planner's input order)."""
        return [self.records[p] for p in sorted(self.records)]
