"""Real mDNS on loopback: peers find each other, see mismatches, and notice departures."""

from __future__ import annotations

import asyncio

import pytest
from edgeshard.discovery.mdns import PROTOCOL_VERSION, Found, MdnsDiscovery, peer_of


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
        # Other services on this loopback (another test run) may be found too: look for ours.
        await _wait_for(lambda: all(set(found) - {name} <= set(seen) for name, seen in found.items()))
        assert found["alpha"]["beta"].address == "http://127.0.0.1:7421"
        assert found["alpha"]["gamma"].cluster == "office"  # found, so the caller can say why it is ignored
        assert found["beta"]["alpha"].model == "model-x" and found["beta"]["alpha"].version == PROTOCOL_VERSION
        await peers[2].stop()
        await _wait_for(lambda: "gamma" in lost["alpha"] and "gamma" in lost["beta"])
    finally:
        for peer in peers[:2]:
            await peer.stop()


@pytest.mark.timeout(90)
async def test_peers_of_one_name_in_two_clusters_both_announce() -> None:
    """Two clusters on one LAN may both have a peer "p1": their instance names differ, so neither
    sees the other as a name conflict (which stopped a restarted peer), and a watcher finds both."""
    seen: list[Found] = []

    def discovery(peer_id: str, port: int, cluster: str, record: bool = False) -> MdnsDiscovery:
        found = seen.append if record else lambda _found: None
        return MdnsDiscovery(peer_id, "127.0.0.1", port, cluster, "m", on_found=found, interfaces=["127.0.0.1"])

    peers = [discovery("omega", 7501, "home"), discovery("omega", 7502, "office"), discovery("w", 7503, "home", True)]
    started: list[MdnsDiscovery] = []
    try:
        for peer in peers:
            await peer.start()
            started.append(peer)
        names = [peer._info.name for peer in peers[:2] if peer._info is not None]
        assert names == ["omega@home._edgeshard._tcp.local.", "omega@office._edgeshard._tcp.local."]
        await _wait_for(lambda: {(f.peer_id, f.cluster) for f in seen} >= {("omega", "home"), ("omega", "office")})
        assert peer_of("omega@home-2._edgeshard._tcp.local.") == "omega" and peer_of("x._edgeshard._tcp.local.") == "x"
    finally:
        for peer in started:
            await peer.stop()
