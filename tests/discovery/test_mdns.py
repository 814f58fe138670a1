"""Real mDNS on loopback: peers find each other, see mismatches, and notice departures."""

from __future__ import annotations

import asyncio

import pytest
from edgeshard.discovery.mdns import Found, MdnsDiscovery


async def _wait_for(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.mark.timeout(90)
async def test_three_peers_find_each_other_on_loopback() -> None:
    found: dict[str, dict[str, Found]] = {name: {} for name in ("alpha", "beta", "gamma")}
    lost: dict[str, list[str]] = {name: [] for name in found}
    peers = [
        MdnsDiscovery(
            name,
            "127.0.0.1",
            7420 + i,
            "home" if name != "gamma" else "office",
            "model-x",
            on_found=lambda f, n=name: found[n].__setitem__(f.peer_id, f),
            on_lost=lambda p, n=name: lost[n].append(p),
            interfaces=["127.0.0.1"],
        )
        for i, name in enumerate(found)
    ]
    try:
        for peer in peers:
            await peer.start()
        await _wait_for(lambda: all(len(seen) == 2 for seen in found.values()))
        assert found["alpha"]["beta"].address == "http://127.0.0.1:7421"
        assert found["alpha"]["gamma"].cluster == "office"  # found, so the caller can say why it is ignored
        assert found["beta"]["alpha"].model == "model-x" and found["beta"]["alpha"].version == "1"
        await peers[2].stop()
        await _wait_for(lambda: "gamma" in lost["alpha"] and "gamma" in lost["beta"])
    finally:
        for peer in peers[:2]:
            await peer.stop()
