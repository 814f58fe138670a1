"""Membership events as the daemon takes them: joins and leaves logged, departures counted (each
re-plans at once), routes through a departed peer aborted, mDNS finds made gossip candidates,
mDNS goodbyes turned into an immediate check, link figures published, exclusions logged once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from edgeshard.discovery.gossip import Gossip
from edgeshard.discovery.mdns import Found
from edgeshard.discovery.membership import Membership
from edgeshard.discovery.records import PeerId

from ..pipeline.origin import Origin
from .probing import LinkFigures

log = logging.getLogger("edgeshard.peer")


class Roster:
    """Who this peer has seen come and go, and what it does about it."""

    def __init__(
        self, cluster: str, membership: Membership, gossip: Gossip, links: LinkFigures, origin: Origin
    ) -> None:
        self.cluster = cluster
        self.membership, self.gossip = membership, gossip
        self.links, self.origin = links, origin
        self.departures = 0  # peers that left the view so far: each one re-plans at once
        self.wake = asyncio.Event()  # the plan loop looks again
        self._excluded_logged: dict[PeerId, str] = {}
        self._addresses: dict[PeerId, str] = {}

    def found(self, found: Found) -> None:
        """An mDNS find: a gossip candidate, when it is of our cluster."""
        if found.cluster != self.cluster:
            log.info("mDNS: ignoring %s at %s: it belongs to cluster %r", found.peer_id, found.address, found.cluster)
            return
        if found.peer_id not in self.membership.records:
            log.debug("mDNS: found %s at %s", found.peer_id, found.address)
        self.gossip.add_candidate(found.address)

    def lost(self, peer: str) -> None:
        """An mDNS goodbye. mDNS is unauthenticated, so it only makes us check the peer now: a
        refused connection or the peer's own leave certificate removes it, nothing else."""
        if self.gossip.suspect(PeerId(peer)):
            log.info("mDNS: %s said goodbye; checking it now", peer)

    def changed(self, joined: list[PeerId], left: list[PeerId]) -> None:
        """Gossip's report: peers that joined or changed, peers that left the view."""
        for peer in joined:
            record = self.membership.records.get(peer)
            if record is not None and peer not in self._addresses:
                log.info("peer %s (id %s) joined (%s)", record.label, peer, record.address)
            if record is not None:
                self._addresses[peer] = record.address
        for peer in left:
            address = self._addresses.pop(peer, "")
            self._excluded_logged.pop(peer, None)
            self.links.forget(peer)
            log.warning("peer %s left: declared dead", peer)
            if address:
                self.origin.abort_route(address, "peer-dead", f"peer {peer} was declared dead")
        self.departures += len(left)
        self.wake.set()

    def link_measured(self, peer: PeerId, mbps: float, rtt_ms: float) -> None:
        """A probe's figures: republished when they left their band."""
        published = self.links.measured(peer, mbps, rtt_ms)
        if published is None:
            return
        self.membership.announce(links=self.links.links(self.membership.records))
        log.info(
            "link to %s: %.0f Mbps, %.2f ms round trip (measured %.0f Mbps, %.2f ms)", peer, *published, mbps, rtt_ms
        )

    def excluded(self, excluded: Mapping[PeerId, str]) -> None:
        """Log once per peer and reason why it is left out of the plan."""
        for peer, why in excluded.items():
            if self._excluded_logged.get(peer) != why:
                self._excluded_logged[peer] = why
                record = self.membership.records.get(peer)
                log.warning("peer %s is left out of the plan: it %s", record.label if record else peer, why)
