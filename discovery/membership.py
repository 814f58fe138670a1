"""The membership view: gossiped records + failure detection; the dead leave, no ghosts.

Decide-then-act: `apply`, `bury` and `sweep` are pure state transitions driven by the gossip
loop with explicit times. A dead peer's record is removed and a tombstone keeps its last clock
for `TOMBSTONE_S`, so stale copies still circulating in gossip cannot bring it back; the peer
itself comes back with a newer clock (a higher heartbeat if it was only cut off, a higher
incarnation after a restart). Tombstones expire: a peer whose clock went backwards (its state
directory was restored) is shut out for minutes, not forever.

Our own record is signed with our key on every change (`sign`). A record about ourselves that is
newer than ours, from our address, is a previous life of ours (a restored state directory):
we refute it SWIM-style by taking a higher incarnation (`on_incarnation` keeps it on disk).
A death certificate is the last signed record its issuer held of the dead peer: it removes that
record and older ones of the same incarnation, never a later life, and claims no more than
the peer itself once signed.

A peer that stops on purpose certifies its own departure the same way (`leave`): its last record
becomes its own certificate, and from then on its record never changes (no heartbeat, no
announcement, no refutation), so no copy of it can outlive the certificate anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from .failure import FailurePolicy, Health, PhiAccrual
from .records import MAX_PEERS, PeerId, PeerRecord, merge

log = logging.getLogger(__name__)

TOMBSTONE_S = 300.0  # far longer than a stale record can circulate after every view dropped it


def _unsigned(record: PeerRecord) -> PeerRecord:
    return record


@dataclass
class Membership:
    """One peer's view of the cluster."""

    own: PeerRecord
    policy: FailurePolicy = field(default_factory=FailurePolicy)
    sign: Callable[[PeerRecord], PeerRecord] = _unsigned
    on_incarnation: Callable[[int], None] = lambda _incarnation: None
    records: dict[PeerId, PeerRecord] = field(default_factory=dict)
    detectors: dict[PeerId, PhiAccrual] = field(default_factory=dict)
    tombstones: dict[PeerId, tuple[tuple[int, int], float]] = field(default_factory=dict)  # clock, until
    # Deaths this peer confirmed or learnt of (a refused connection, not mere silence): gossiped,
    # so every view drops the peer at once instead of each waiting out `dead_after_s`.
    obituaries: dict[PeerId, PeerRecord] = field(default_factory=dict)
    twins: set[str] = field(default_factory=set)  # other addresses using our id (a cloned state dir)
    now: float = 0.0  # the time of the last transition (tombstones expire against it)
    leaving: bool = False  # we certified our own departure: our record is frozen

    def __post_init__(self) -> None:
        self.own = self.sign(self.own)
        self.records[self.own.peer_id] = self.own

    def beat(self) -> PeerRecord:
        """Advance our own heartbeat (once per gossip round); never once we are leaving."""
        if self.leaving:
            return self.own
        self.own = self.sign(self.own.beat())
        self.records[self.own.peer_id] = self.own
        return self.own

    def announce(self, **changes: object) -> PeerRecord:
        """Change our own record (e.g. the plan we serve); the next beat carries it. Once we are
        leaving, nothing changes."""
        if self.leaving:
            return self.own
        self.own = replace(self.own, **changes)  # type: ignore[arg-type]
        return self.beat()

    def apply(self, incoming: Iterable[PeerRecord], now: float) -> list[PeerId]:
        """Merge gossiped records (those of our cluster); returns peers that joined or changed."""
        self._expire(now)
        fresh: dict[PeerId, PeerRecord] = {}
        for record in incoming:
            if record.peer_id == self.own.peer_id:
                self._about_us(record)
            elif (
                record.cluster == self.own.cluster
                and record.clock > self._tombstone(record.peer_id)
                and (
                    record.peer_id in self.records
                    or record.peer_id in fresh
                    or len(self.records) + len(fresh) < MAX_PEERS
                )
            ):
                fresh[record.peer_id] = max(record, fresh.get(record.peer_id, record), key=lambda r: r.clock)
        self.records, changed = merge(self.records, fresh.values())
        for peer in changed:
            self.tombstones.pop(peer, None)
            self.obituaries.pop(peer, None)
            self.detectors.setdefault(peer, PhiAccrual()).heartbeat(now)
        return changed

    def _about_us(self, record: PeerRecord) -> None:
        if record.clock < self.own.clock or self.leaving:
            return  # an older life of ours (perhaps at an address we had before): harmless
        if record.address != self.own.address:
            if record.address not in self.twins and len(self.twins) < 16:
                self.twins.add(record.address)
                log.error(
                    "another peer at %s uses this peer's key (id %s): was the state directory copied? "
                    "give it a fresh --state-dir",
                    record.address,
                    self.own.peer_id,
                )
            return
        if record.signed != self.own.signed:
            # A previous life of ours is newer than us: out-number it (SWIM's refutation).
            incarnation = record.incarnation + 1
            self.on_incarnation(incarnation)
            log.warning("a newer record of this peer circulates (incarnation %d): refuting it", record.incarnation)
            self.own = self.sign(replace(self.own, incarnation=incarnation, heartbeat=0))
            self.records[self.own.peer_id] = self.own

    def _tombstone(self, peer: PeerId) -> tuple[int, int]:
        stone = self.tombstones.get(peer)
        return stone[0] if stone is not None else (-1, -1)

    def _expire(self, now: float) -> None:
        self.now = max(self.now, now)
        for peer in [p for p, (_clock, until) in self.tombstones.items() if until <= self.now]:
            del self.tombstones[peer]
            self.obituaries.pop(peer, None)

    def health(self, now: float) -> dict[PeerId, Health]:
        """Every known peer's health (we are always alive to ourselves)."""
        states: dict[PeerId, Health] = {self.own.peer_id: "alive"}
        for peer, detector in self.detectors.items():
            if peer in self.records:
                states[peer] = self.policy.health(detector, now)
        return states

    def sweep(self, now: float) -> list[PeerId]:
        """Remove peers declared dead; returns them."""
        self._expire(now)
        dead = sorted(p for p, h in self.health(now).items() if h == "dead")
        for peer in dead:
            self._remove(peer)
        return dead

    def _remove(self, peer: PeerId) -> None:
        self._bury_stone(peer, self.records.pop(peer).clock)
        self.detectors.pop(peer, None)

    def _bury_stone(self, peer: PeerId, clock: tuple[int, int]) -> None:
        if peer in self.tombstones or len(self.tombstones) < 4 * MAX_PEERS:
            self.tombstones[peer] = (max(clock, self._tombstone(peer)), self.now + TOMBSTONE_S)

    def confirm_dead(self, peer: PeerId) -> bool:
        """We know `peer` is gone (its port refused us): drop it and certify the death."""
        if peer == self.own.peer_id or peer not in self.records:
            return False
        self.obituaries[peer] = self.records[peer]
        self._remove(peer)
        return True

    def leave(self) -> PeerRecord:
        """We are going: certify our own departure with our last signed record, as a refused
        connection would, and freeze that record. Whoever gets the certificate drops us at once
        (and passes it on); it claims nothing we did not sign. Returns the certificate."""
        self.leaving = True
        self.obituaries[self.own.peer_id] = self.own
        return self.own

    def bury(self, obituaries: Iterable[PeerRecord]) -> list[PeerId]:
        """Apply gossiped death certificates; a record newer than the certificate survives
        (the peer restarted or was alive after all). Returns the peers removed."""
        buried = []
        for dead in sorted(obituaries, key=lambda r: r.peer_id):
            peer = dead.peer_id
            if peer == self.own.peer_id or dead.cluster != self.own.cluster:
                continue
            held = self.records.get(peer)
            if held is not None and held.incarnation == dead.incarnation and held.clock <= dead.clock:
                self._remove(peer)
                buried.append(peer)
            known = self.obituaries.get(peer)
            newer = known.clock < dead.clock if known is not None else len(self.obituaries) < MAX_PEERS
            if peer not in self.records and newer:
                self.obituaries[peer] = dead  # pass the certificate on
                self._bury_stone(peer, dead.clock)
        return buried

    def view(self) -> list[PeerRecord]:
        """Live records sorted by peer id (the planner's input order)."""
        return [self.records[p] for p in sorted(self.records)]
