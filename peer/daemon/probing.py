"""Link probes from this peer to every other, and which figures it publishes.

Each link is probed at join and every `PROBE_INTERVAL_S` (`discovery.probe.measure_link`), but
not while this peer's stage is computing: a probe that competes with a forward pass for the
CPU measures the load, not the link (the same loopback link read 1 to 8 Gbps under load). Once
a link has a figure, probes wait until the stage is idle. `LinkFigures` (pure) smooths what is
published: the median of the last `WINDOW` measurements, published only when it leaves a
factor-of-two band around the published figure (`discovery.probe.settle`), because every
published change re-plans the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Any

import aiohttp
from edgeshard.discovery.auth import Authenticator
from edgeshard.discovery.probe import measure_link, settle
from edgeshard.discovery.records import LinkMeasure, PeerId, PeerRecord

log = logging.getLogger("edgeshard.peer")

PROBE_INTERVAL_S = 60.0
PROBE_POLL_S = 1.0
PROBE_TIMEOUT_S = 10.0
WINDOW = 5  # measurements per link the published figure is the median of


class LinkFigures:
    """The link figures this peer publishes, per other peer."""

    def __init__(self) -> None:
        self.published: dict[PeerId, tuple[float, float]] = {}
        self._recent: dict[PeerId, deque[tuple[float, float]]] = {}

    def measured(self, peer: PeerId, mbps: float, rtt_ms: float) -> tuple[float, float] | None:
        """Take a measurement; the new published (mbps, rtt_ms), or None when it stays."""
        recent = self._recent.setdefault(peer, deque(maxlen=WINDOW))
        recent.append((mbps, rtt_ms))
        mbps = statistics.median(m for m, _ in recent)
        rtt_ms = statistics.median(r for _, r in recent)
        old = self.published.get(peer)
        new = (settle(old[0] if old else None, mbps), settle(old[1] if old else None, rtt_ms))
        if new == old:
            return None
        self.published[peer] = new
        return new

    def forget(self, peer: PeerId) -> None:
        """The peer left: its link is no longer published."""
        self.published.pop(peer, None)
        self._recent.pop(peer, None)

    def links(self, live: Collection[PeerId]) -> tuple[LinkMeasure, ...]:
        """What our record carries: the published figures to live peers, sorted by peer."""
        return tuple(LinkMeasure(p, m, r) for p, (m, r) in sorted(self.published.items()) if p in live)


async def probe_forever(
    own: PeerId,
    view: Callable[[], Sequence[PeerRecord]],
    on_measured: Callable[[PeerId, float, float], None],
    busy: Callable[[], bool] = lambda: False,
    auth: Authenticator | None = None,
    pin: Callable[[str], Any] = lambda _address: True,
) -> None:
    """Probe every peer in `view()` at join and then every PROBE_INTERVAL_S, until cancelled;
    a link already measured waits while `busy()` (the stage is computing)."""
    probed: dict[PeerId, float] = {}
    measured: set[PeerId] = set()  # links with a measurement: only these wait while busy
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as session:
        while True:
            await asyncio.sleep(PROBE_POLL_S)
            now = time.monotonic()
            records = view()
            live = {record.peer_id for record in records}
            for gone in [p for p in probed if p not in live]:  # bounded by the view
                probed.pop(gone)
                measured.discard(gone)
            for record in records:
                peer = record.peer_id
                if peer == own or now - probed.get(peer, -1e9) < PROBE_INTERVAL_S:
                    continue
                if peer in measured and busy():
                    continue
                probed[peer] = now
                try:
                    mbps, rtt_ms = await measure_link(session, record.address, auth=auth, ssl=pin(record.address))
                except (aiohttp.ClientError, OSError, TimeoutError) as error:
                    log.debug("probe of %s failed: %s", peer, error)
                    continue
                except Exception:  # a bug, or a record nothing foresaw: one probe, never the loop
                    log.exception("probe of %s failed", peer)
                    continue
                measured.add(peer)
                on_measured(peer, mbps, rtt_ms)
