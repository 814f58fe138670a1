"""Gossip over real loopback HTTP: peers converge from a bootstrap chain; the dead leave."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from edgeshard.discovery.failure import FailurePolicy
from edgeshard.discovery.gossip import GOSSIP_PATH, Gossip
from edgeshard.discovery.membership import Membership
from edgeshard.discovery.records import PeerId, PeerRecord
from edgeshard.peer.pipeline.servers import start_server


async def _peer(name: str, bootstrap: list[str]) -> tuple[Gossip, web.AppRunner]:
    # Bind first (port 0), then build the record with the real address.
    holder: list[Gossip] = []

    async def handle(request: web.Request) -> web.Response:
        return await holder[0].handle(request)

    def mount(app: web.Application) -> None:
        app.router.add_post(GOSSIP_PATH, handle)

    runner, url = await start_server(mount)
    record = PeerRecord(PeerId(name), 1, 0, url, "home", "m", 2**30, (1.0, 1.0))
    gossip = Gossip(Membership(record, FailurePolicy(dead_after_s=2.0)), bootstrap, interval_s=0.1)
    holder.append(gossip)
    return gossip, runner


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
    assert all(sorted(g.membership.records) == ["a", "b", "c"] for g in gossips)
    # c stops answering (its server goes away) and stops gossiping.
    await three[2][1].cleanup()
    survivors = gossips[:2]
    dead: list[list[PeerId]] = [[], []]
    for _ in range(60):
        await asyncio.sleep(0.1)
        results = await asyncio.gather(*(g.round() for g in survivors))
        for index, gone in enumerate(results):
            dead[index] += gone
        if all("c" in d for d in dead):
            break
    assert dead == [["c"], ["c"]]
    assert all(sorted(g.membership.records) == ["a", "b"] for g in survivors)


async def test_garbage_gets_400_and_changes_nothing(three: list[tuple[Gossip, web.AppRunner]]) -> None:
    gossip = three[0][0]
    address = gossip.membership.own.address + GOSSIP_PATH
    async with aiohttp.ClientSession() as session, session.post(address, data=b"\xc1\x00junk") as response:
        assert response.status == 400
    assert list(gossip.membership.records) == ["a"]


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


async def test_two_peers_with_one_name_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    a = await _peer("same", [])
    b = await _peer("same", [a[0].membership.own.address])
    try:
        await b[0].round()
        assert "also calls itself 'same'" in caplog.text
    finally:
        for gossip, runner in (a, b):
            await gossip.close()
            await runner.cleanup()
