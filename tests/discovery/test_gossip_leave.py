"""A peer that stops on purpose leaves at once (its own certificate, pushed to every peer); an
mDNS goodbye, which anyone could forge, only makes the others check the peer."""

from __future__ import annotations

import asyncio

from aiohttp import web
from edgeshard.discovery.gossip import Gossip
from edgeshard.discovery.records import PeerId

from .test_gossip_http import _peer, names


async def _converged(peers: list[tuple[Gossip, web.AppRunner]]) -> list[Gossip]:
    gossips = [g for g, _ in peers]
    for _ in range(20):
        await asyncio.gather(*(g.round() for g in gossips))
        if all(len(g.membership.records) == len(gossips) for g in gossips):
            break
    assert all(len(g.membership.records) == len(gossips) for g in gossips)
    return gossips


async def test_a_leaving_peer_is_dropped_by_all_at_once_and_stays_out_while_it_still_answers() -> None:
    a = await _peer("a", [])
    b = await _peer("b", [a[0].membership.own.address])
    c = await _peer("c", [a[0].membership.own.address])
    peers = [a, b, c]
    try:
        ga, gb, gc = await _converged(peers)
        left: list[PeerId] = []
        for gossip in (ga, gb):
            gossip.on_change = lambda _joined, gone: left.extend(gone)
        leaver = gc.membership.own.peer_id
        assert await gc.leave() == 2  # both heard it directly, without a gossip round
        assert left == [leaver, leaver]
        assert names(ga) == names(gb) == ["a", "b"]
        # c still serves (it drains): the others gossip on, c answers with its frozen record, and
        # nothing brings it back.
        gc.add_candidate(ga.membership.own.address)
        for _ in range(3):
            await asyncio.gather(ga.round(), gb.round(), ga.exchange(gc.membership.own.address))
        assert names(ga) == names(gb) == ["a", "b"]
    finally:
        for gossip, runner in peers:
            await gossip.close()
            await runner.cleanup()


async def test_an_mdns_goodbye_only_triggers_a_check() -> None:
    a = await _peer("a", [])
    b = await _peer("b", [a[0].membership.own.address])
    peers = [a, b]
    try:
        ga, gb = await _converged(peers)
        b_id = gb.membership.own.peer_id
        assert not ga.suspect(PeerId("0123456789abcdef"))  # not a member: nothing to check
        assert not ga.suspect(ga.membership.own.peer_id)  # never ourselves
        # A forged goodbye for a live peer: one check, and it stays.
        assert ga.suspect(b_id)
        assert not ga.suspect(b_id)  # one check at a time per peer, however many goodbyes come
        checks = list(ga._checks.values())
        assert len(checks) == 1 and await asyncio.wait_for(checks[0], 10)  # the check ran, and b answered
        assert names(ga) == ["a", "b"]
        # A real goodbye: b's port is closed, the check is refused, b is gone at once.
        await b[1].cleanup()
        removed: list[PeerId] = []
        ga.on_change = lambda _joined, gone: removed.extend(gone)
        assert ga.suspect(b_id)
        for _ in range(50):
            if removed:
                break
            await asyncio.sleep(0.05)
        assert removed == [b_id] and names(ga) == ["a"]
    finally:
        for gossip, runner in peers:
            await gossip.close()
            await runner.cleanup()
