"""Gossip over real loopback HTTP: peers converge from a bootstrap chain; the dead leave."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from functools import partial

import aiohttp
import pytest
from aiohttp import web
from edgeshard.discovery.auth import Authenticator, middleware
from edgeshard.discovery.failure import FailurePolicy
from edgeshard.discovery.gossip import GOSSIP_PATH, Gossip
from edgeshard.discovery.membership import Membership
from edgeshard.discovery.records import PeerId, PeerRecord, encode_exchange, sign_record
from edgeshard.discovery.signing import Signer
from edgeshard.peer.pipeline.servers import start_server


async def _peer(
    name: str,
    bootstrap: list[str],
    secret: bytes | None = None,
    key: Signer | None = None,
    port: int = 0,
    incarnation: int = 1,
) -> tuple[Gossip, web.AppRunner]:
    # Bind first (port 0), then build the record with the real address.
    holder: list[Gossip] = []
    auth = Authenticator(secret)

    async def handle(request: web.Request) -> web.Response:
        return await holder[0].handle(request)

    def mount(app: web.Application) -> None:
        app.middlewares.append(middleware(auth, lambda host, why: None))
        app.router.add_post(GOSSIP_PATH, handle)

    runner, url = await start_server(mount, port=port)
    key = key or Signer()
    record = PeerRecord(
        PeerId(key.peer_id), incarnation, 0, url, "home", "m", 2**30, (1.0, 1.0), name=name, key=key.public_key
    )
    members = Membership(record, FailurePolicy(dead_after_s=2.0), sign=partial(sign_record, sign=key.sign))
    gossip = Gossip(members, bootstrap, interval_s=0.1, auth=auth)
    holder.append(gossip)
    return gossip, runner


def names(gossip: Gossip) -> list[str]:
    return sorted(r.name for r in gossip.membership.records.values())


@pytest.fixture
async def three() -> AsyncIterator[list[tuple[Gossip, web.AppRunner]]]:
    a = await _peer("a", [])
    b = await _peer("b", [a[0].membership.own.address])
    c = await _peer("c", [b[0].membership.own.address])  # c only knows b
    peers = [a, b, c]
    yield peers
    for gossip, runner in peers:
        await gossip.close()
        await runner.cleanup()


async def test_views_converge_and_a_dead_peer_leaves(three: list[tuple[Gossip, web.AppRunner]]) -> None:
    gossips = [g for g, _ in three]
    for _ in range(20):
        await asyncio.gather(*(g.round() for g in gossips))
        if all(len(g.membership.records) == 3 for g in gossips):
            break
    assert all(names(g) == ["a", "b", "c"] for g in gossips)
    c_id = three[2][0].membership.own.peer_id
    # c stops answering (its server goes away) and stops gossiping.
    await three[2][1].cleanup()
    survivors = gossips[:2]
    dead: list[list[PeerId]] = [[], []]
    for _ in range(60):
        await asyncio.sleep(0.1)
        results = await asyncio.gather(*(g.round() for g in survivors))
        for index, gone in enumerate(results):
            dead[index] += gone
        if all(c_id in d for d in dead):
            break
    assert dead == [[c_id], [c_id]]
    assert all(names(g) == ["a", "b"] for g in survivors)


async def test_a_seed_that_restarts_with_no_bootstrap_list_is_found_again() -> None:
    """a is the seed (b lists it, c lists b). b dies for good, then a dies and restarts on its
    address with an empty list: only c is left, which never listed a; c finds a again because
    it keeps trying the addresses of the peers it lost."""
    key = Signer()
    peers = [await _peer("a", [], key=key)]
    address = peers[0][0].membership.own.address
    peers.append(await _peer("b", [address]))
    peers.append(await _peer("c", [peers[1][0].membership.own.address]))
    try:
        for _ in range(20):
            await asyncio.gather(*(g.round() for g, _ in peers))
        assert all(names(g) == ["a", "b", "c"] for g, _ in peers)
        for gossip, runner in peers[:2]:
            await gossip.close()
            await runner.cleanup()
        c = peers[2][0]
        for _ in range(60):
            await c.round()
            if names(c) == ["c"]:
                break
            await asyncio.sleep(0.1)
        assert names(c) == ["c"]
        await c.round()
        assert address in c.lost
        b_address = peers[1][0].membership.own.address
        assert b_address in c.lost and b_address in c.candidates  # c's bootstrap peer, lost:
        assert b_address not in c._targets()  # contacted in the background only, not twice
        # The device comes back: its key, the next incarnation, its port, and no bootstrap list.
        a = await _peer("a", [], key=key, port=int(address.rsplit(":", 1)[1]), incarnation=2)
        peers = [a, peers[2]]
        for _ in range(30):
            await asyncio.gather(a[0].round(), c.round())
            if names(a[0]) == names(c) == ["a", "c"]:
                break
            await asyncio.sleep(0.05)
        assert names(a[0]) == names(c) == ["a", "c"]
        assert address not in c.lost
    finally:
        for gossip, runner in peers:
            await gossip.close()
            await runner.cleanup()


async def test_garbage_gets_400_and_changes_nothing(three: list[tuple[Gossip, web.AppRunner]]) -> None:
    gossip = three[0][0]
    address = gossip.membership.own.address + GOSSIP_PATH
    async with aiohttp.ClientSession() as session, session.post(address, data=b"\xc1\x00junk") as response:
        assert response.status == 400
    assert names(gossip) == ["a"]


async def test_two_dozen_peers_over_http_converge_in_logarithmic_rounds() -> None:
    """24 real gossip servers in this process, each told only of peer 0: every view is complete
    within a few rounds (push-pull spreads a record in O(log N) rounds)."""
    first = await _peer("n00", [])
    address = first[0].membership.own.address
    peers = [first] + [await _peer(f"n{i:02d}", [address]) for i in range(1, 24)]
    try:
        gossips = [g for g, _ in peers]
        rounds = 0
        while not all(len(g.membership.records) == 24 for g in gossips):
            rounds += 1
            assert rounds <= 2 * math.ceil(math.log2(24)) + 2, f"not converged after {rounds - 1} rounds"
            await asyncio.gather(*(g.round() for g in gossips))
        print(f"\n24 peers converged in {rounds} rounds")
    finally:
        for gossip, runner in peers:
            await gossip.close()
            await runner.cleanup()


async def test_a_copied_key_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    key = Signer()  # two peers started from one state directory (a cloned image)
    a = await _peer("same", [], key=key)
    b = await _peer("same", [a[0].membership.own.address], key=key)
    for _ in range(3):
        a[0].membership.beat()  # the clone that is ahead is the one the other notices
    try:
        await b[0].round()
        await b[0].round()
        assert "uses this peer's key" in caplog.text
    finally:
        for gossip, runner in (a, b):
            await gossip.close()
            await runner.cleanup()


async def test_only_holders_of_the_secret_join_and_strangers_learn_nothing() -> None:
    secret = b"k" * 32
    a = await _peer("a", [], secret)
    b = await _peer("b", [a[0].membership.own.address], secret)
    stranger = await _peer("stranger", [a[0].membership.own.address, b[0].membership.own.address])
    wrong = await _peer("wrong", [a[0].membership.own.address], b"w" * 32)
    everyone = [a, b, stranger, wrong]
    try:
        for gossip, _ in everyone:  # the members also find the others (as mDNS would tell them)
            for other, _ in everyone:
                gossip.add_candidate(other.membership.own.address)
        for _ in range(6):
            await asyncio.gather(*(g.round() for g, _ in everyone))
        assert names(a[0]) == names(b[0]) == ["a", "b"]
        # The members contacted the strangers too, but told them nothing before a signed reply.
        assert names(stranger[0]) == ["stranger"] and names(wrong[0]) == ["wrong"]
        # A raw request without credentials gets a 401 and no records.
        async with aiohttp.ClientSession() as session:
            body = encode_exchange({}, [])
            async with session.post(a[0].membership.own.address + GOSSIP_PATH, data=body) as response:
                assert response.status == 401
                assert b"home" not in await response.read()
    finally:
        for gossip, runner in everyone:
            await gossip.close()
            await runner.cleanup()
