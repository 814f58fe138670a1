"""Push-pull anti-entropy over aiohttp: the loop that carries `Membership`'s pure decisions.

Each round this peer beats its own heartbeat, picks `fanout` targets (random live peers, plus
bootstrap addresses and mDNS finds it has no record for yet), and POSTs `/gossip` with its digest
and its records; the target merges them and answers with every record the sender's digest shows it
lacks. Then dead peers are swept. Every request has a timeout; a malformed body gets a 400 and
changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web

from .membership import Membership
from .records import PeerId, PeerRecord, RecordError, decode_exchange, digest, encode_exchange, newer_than

log = logging.getLogger(__name__)

GOSSIP_PATH = "/gossip"
REQUEST_TIMEOUT = 3.0
MAX_BODY = 4 * 2**20


class Gossip:
    """Gossip for one membership view."""

    def __init__(
        self,
        membership: Membership,
        bootstrap: list[str] | None = None,
        interval: float = 1.0,
        fanout: int = 2,
        on_change: Callable[[list[PeerId], list[PeerId]], None] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.membership = membership
        self.candidates: set[str] = set(bootstrap or [])  # addresses to try until they have records
        self.interval, self.fanout = interval, fanout
        self.on_change = on_change
        self.rng = rng or random.Random()
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None

    def add_routes(self, app: web.Application) -> None:
        """Mount the /gossip endpoint."""
        app.router.add_post(GOSSIP_PATH, self.handle)

    def add_candidate(self, address: str) -> None:
        """An address worth contacting (a bootstrap peer, an mDNS find)."""
        self.candidates.add(address)

    async def handle(self, request: web.Request) -> web.Response:
        """The /gossip endpoint: merge what came, answer with what the sender lacks."""
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return web.Response(status=413, text="gossip body too large")
        try:
            theirs, records = decode_exchange(body)
        except RecordError as error:
            return web.Response(status=400, text=str(error))
        self._merge(records)
        reply = encode_exchange(digest(self.membership.records), newer_than(self.membership.records, theirs))
        return web.Response(body=reply, content_type="application/msgpack")

    def _merge(self, records: list[PeerRecord]) -> None:
        joined = self.membership.apply(records, self.clock())
        if joined and self.on_change is not None:
            self.on_change(joined, [])

    def _targets(self) -> list[str]:
        own = self.membership.own
        known = {r.address for r in self.membership.records.values()}
        peers = sorted(r.address for r in self.membership.records.values() if r.peer_id != own.peer_id)
        fresh = sorted(self.candidates - known - {own.address})
        chosen = self.rng.sample(peers, min(self.fanout, len(peers)))
        return chosen + fresh

    async def exchange(self, address: str) -> None:
        """One push-pull exchange with the peer at `address`."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        records = self.membership.view()
        body = encode_exchange(digest(self.membership.records), records)
        try:
            async with self._session.post(address + GOSSIP_PATH, data=body) as response:
                if response.status != 200:
                    log.warning("gossip with %s: HTTP %s", address, response.status)
                    return
                reply = await response.content.read(MAX_BODY + 1)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            log.debug("gossip with %s failed: %s", address, error or type(error).__name__)
            return
        try:
            _, records = decode_exchange(reply)
        except RecordError as error:
            log.warning("bad gossip reply from %s: %s", address, error)
            return
        self._merge(records)

    async def round(self) -> list[PeerId]:
        """One gossip round; returns the peers declared dead in it."""
        self.membership.beat()
        await asyncio.gather(*(self.exchange(address) for address in self._targets()))
        dead = self.membership.sweep(self.clock())
        if dead and self.on_change is not None:
            self.on_change([], dead)
        return dead

    async def run(self) -> None:
        """Gossip forever (until cancelled)."""
        try:
            while True:
                await self.round()
                await asyncio.sleep(self.interval)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._session is not None:
            await self._session.close()
            self._session = None
