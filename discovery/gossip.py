"""Push-pull anti-entropy over aiohttp: the loop that carries `Membership`'s pure decisions.

Each round this peer beats its own heartbeat, picks `fanout` targets (random live peers, plus
bootstrap addresses and mDNS finds it has no record for yet), and POSTs `/gossip` with its digest
and its records; the target merges them and answers with every record the sender's digest shows it
lacks. Then dead peers are swept. The addresses of peers that left the view are tried again in the
background each round, so a device that comes back is found even by peers that never listed it.
Every request has a timeout; a malformed body gets a 400 and changes nothing. `leave` pushes this
peer's own death certificate to every peer at once (a stop on purpose); `suspect` checks a peer
now on an unauthenticated hint (an mDNS goodbye). Requests are signed with the cluster secret
(`auth`; the receiving server's middleware checks them) and a reply counts only when it is signed
too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from .auth import RESPONSE_HEADER, Authenticator
from .membership import Membership
from .records import MAX_PEERS, Exchange, PeerId, RecordError, decode_exchange, digest, encode_exchange, newer_than

log = logging.getLogger(__name__)

GOSSIP_PATH = "/gossip"
REQUEST_TIMEOUT_S = 3.0
MAX_BODY = 4 * 2**20


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None when it is (or says it is) over `limit` bytes."""
    if response.content_length is not None and response.content_length > limit:
        return None
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Gossip:
    """Gossip for one membership view."""

    def __init__(
        self,
        membership: Membership,
        bootstrap: list[str] | None = None,
        interval_s: float = 1.0,
        fanout: int = 2,
        on_change: Callable[[list[PeerId], list[PeerId]], None] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        auth: Authenticator | None = None,
        pin: Callable[[str], Any] = lambda _address: True,
    ) -> None:
        self.membership = membership
        # Addresses to try until they have records (bootstrap, mDNS finds); bounded, oldest out.
        self.candidates: dict[str, None] = dict.fromkeys(bootstrap or [])
        self.auth = auth or Authenticator(None)
        self.pin = pin  # aiohttp's ssl= for an address (`tls.pins` under --tls)
        self.interval_s, self.fanout = interval_s, fanout
        self.on_change = on_change
        self.rng = rng or random.Random()
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._nudged = asyncio.Event()
        self._checks: dict[str, asyncio.Task[bool]] = {}  # address: its check under way
        # Where removed peers lived: contacted again each round, so a device that returns on its
        # address is found even where no one lists it (a bootstrap seed restarted with an empty
        # list); in the background, so a host that is off cannot slow the round. Bounded.
        self.lost: dict[str, None] = {}
        self._addresses: dict[PeerId, str] = {}  # the view's addresses at the last round

    def add_routes(self, app: web.Application) -> None:
        """Mount the /gossip endpoint."""
        app.router.add_post(GOSSIP_PATH, self.handle)

    def add_candidate(self, address: str) -> None:
        """An address worth contacting (a bootstrap peer, an mDNS find)."""
        self.candidates.pop(address, None)
        self.candidates[address] = None
        while len(self.candidates) > MAX_PEERS:
            del self.candidates[next(iter(self.candidates))]

    async def handle(self, request: web.Request) -> web.Response:
        """The /gossip endpoint: merge what came, answer with what the sender lacks."""
        body = await request.read()  # bounded by the server's client_max_size (MAX_BODY)
        if len(body) > MAX_BODY:
            return web.Response(status=413, text="gossip body too large")
        try:
            exchange = decode_exchange(body)
        except RecordError as error:
            return web.Response(status=400, text=str(error))
        self._merge(exchange)
        members = self.membership
        reply = encode_exchange(
            digest(members.records), newer_than(members.records, exchange.digest), members.obituaries.values()
        )
        return web.Response(body=reply, content_type="application/msgpack")

    def _merge(self, exchange: Exchange) -> None:
        joined = self.membership.apply(exchange.records, self.clock())
        buried = self.membership.bury(exchange.obituaries)
        if (joined or buried) and self.on_change is not None:
            self.on_change(joined, buried)

    def _confirm_dead(self, address: str) -> None:
        for record in list(self.membership.records.values()):
            if record.address == address and self.membership.confirm_dead(record.peer_id):
                log.info("peer %s refused a connection: it is gone", record.peer_id)
                if self.on_change is not None:
                    self.on_change([], [record.peer_id])

    def _targets(self) -> list[str]:
        own = self.membership.own
        known = {r.address for r in self.membership.records.values()}
        peers = sorted(r.address for r in self.membership.records.values() if r.peer_id != own.peer_id)
        # A lost address is contacted by `_seek_lost` already, in the background: not twice.
        fresh = sorted(set(self.candidates) - known - {own.address} - set(self.lost))
        chosen = self.rng.sample(peers, min(self.fanout, len(peers)))
        return chosen + fresh

    async def exchange(self, address: str) -> bool:
        """One push-pull exchange with the peer at `address`; whether a signed reply came."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))
        members = self.membership
        if any(record.address == address for record in members.records.values()):
            body = encode_exchange(digest(members.records), members.view(), members.obituaries.values())
        else:  # a first contact tells nothing until a signed reply shows it is a member
            body = encode_exchange({}, [])
        headers = self.auth.sign("POST", GOSSIP_PATH, body)
        try:
            post = self._session.post(address + GOSSIP_PATH, data=body, headers=headers, ssl=self.pin(address))
            async with post as response:
                if response.status != 200:
                    log.warning("gossip with %s: HTTP %s", address, response.status)
                    return False
                reply = await read_capped(response, MAX_BODY)
                if reply is None:
                    log.warning("gossip reply from %s is over %d bytes: ignored", address, MAX_BODY)
                    return False
                if not self.auth.check_reply(headers, response.headers.get(RESPONSE_HEADER), reply):
                    log.warning("gossip reply from %s is not signed with this cluster's secret: ignored", address)
                    return False
        except aiohttp.ClientConnectorError as error:
            # Refused: nothing listens there any more (a crashed or stopped process). A frozen
            # or unreachable host times out instead and is left to the failure detector.
            if isinstance(error.os_error, ConnectionRefusedError):
                self._confirm_dead(address)
            log.debug("gossip with %s failed: %s", address, error)
            return False
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            log.debug("gossip with %s failed: %s", address, error or type(error).__name__)
            return False
        except ValueError as error:  # e.g. a pin that cannot be built: that exchange, not the round
            log.warning("gossip with %s failed: %s", address, error)
            return False
        try:
            exchange = decode_exchange(reply)
        except RecordError as error:
            log.warning("bad gossip reply from %s: %s", address, error)
            return False
        self._merge(exchange)
        return True

    async def check(self, address: str) -> None:
        """Exchange with `address` now (a link to it broke: is it gone?)."""
        await self.exchange(address)

    def suspect(self, peer: PeerId) -> bool:
        """Check `peer` now, on a hint that it is gone which anyone could forge (an mDNS goodbye):
        one exchange with it, in the background. Only what that shows removes it: a refused
        connection, or its own leave certificate in the reply; a peer that answers stays, and a
        silent one is left to the failure detector. False when it is not a member, or is being
        checked already (a flood of goodbyes costs one exchange at a time per peer)."""
        record = self.membership.records.get(peer)
        if record is None or peer == self.membership.own.peer_id:
            return False
        return self._in_background(record.address)

    def _in_background(self, address: str) -> bool:
        """One exchange with `address`, not awaited; False when one is under way already."""
        if address in self._checks:
            return False
        task = asyncio.get_running_loop().create_task(self.exchange(address))
        self._checks[address] = task
        task.add_done_callback(lambda done: self._checked(address, done))
        return True

    def _checked(self, address: str, task: asyncio.Task[bool]) -> None:
        self._checks.pop(address, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("checking %s failed", address, exc_info=task.exception())

    async def leave(self) -> int:
        """Leave for good: certify our own departure (`Membership.leave`) and push it to every
        peer we know at once, so that each re-plans now instead of waiting out the failure
        detector (a peer we cannot reach now hears it from the others). Returns how many answered."""
        own = self.membership.leave()
        others = sorted(r.address for r in self.membership.records.values() if r.peer_id != own.peer_id)
        answered = await asyncio.gather(*(self.exchange(address) for address in others))
        return sum(answered)

    async def round(self) -> list[PeerId]:
        """One gossip round; returns the peers that left the view in it (silent or refused)."""
        before = set(self.membership.records)
        self.membership.beat()
        self._seek_lost()
        await asyncio.gather(*(self.exchange(address) for address in self._targets()))
        swept = self.membership.sweep(self.clock())
        if swept and self.on_change is not None:
            self.on_change([], swept)
        return sorted(before - set(self.membership.records))

    def _seek_lost(self) -> None:
        """Remember the addresses of peers gone since the last round; contact each lost one."""
        records = self.membership.records
        now = {peer: record.address for peer, record in records.items() if peer != self.membership.own.peer_id}
        for peer, address in self._addresses.items():
            if peer not in now:
                self.lost.pop(address, None)
                self.lost[address] = None
        self._addresses = now
        for address in set(now.values()) | {self.membership.own.address}:
            self.lost.pop(address, None)  # back, or taken over by a live peer (or us)
        while len(self.lost) > MAX_PEERS:
            del self.lost[next(iter(self.lost))]
        for address in self.lost:
            self._in_background(address)

    def nudge(self) -> None:
        """Gossip now rather than at the next interval (our record changed: e.g. a new plan is
        served, which every origin waits to see)."""
        self._nudged.set()

    async def run(self) -> None:
        """Gossip forever (until cancelled)."""
        try:
            while True:
                self._nudged.clear()
                try:
                    await self.round()
                except Exception:  # a bug must not end gossip: the others would declare us dead
                    log.exception("gossip round failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._nudged.wait(), self.interval_s)
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop the checks under way; close the HTTP client."""
        for task in list(self._checks.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
