"""The testbed's emulated link delay (peer/pipeline/egress.py) over real loopback sockets: a
stage frame leaves its delay after it is handed over, frames stay in flight together rather
than queue one delay each, and a link probe measures the delay of both ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import pytest
from edgeshard.discovery import probe
from edgeshard.peer.daemon.config import ConfigError, load_config
from edgeshard.peer.pipeline import egress
from edgeshard.peer.pipeline.links import STAGE_PATH, Links, frame_endpoint
from edgeshard.peer.pipeline.servers import start_server
from edgeshard.peer.wire import Error, Frame

DELAY_MS = 150.0


@pytest.fixture
def delayed() -> Iterator[None]:
    egress.set_delay_ms(DELAY_MS)
    probe.emulate_delay(egress.hold)
    try:
        yield
    finally:
        egress.set_delay_ms(0)
        probe.emulate_delay(probe._no_delay)


def test_the_delay_is_a_testbed_setting_of_zero_to_ten_seconds() -> None:
    assert load_config({}, {}).emulate_delay_ms == 0
    assert load_config({"emulate_delay_ms": 2.5}, {}).emulate_delay_ms == 2.5
    assert load_config({}, {"EDGESHARD_PEER_EMULATE_DELAY_MS": "4"}).emulate_delay_ms == 4
    for bad in (-1, 20_000):
        with pytest.raises(ConfigError, match="emulate_delay_ms"):
            load_config({"emulate_delay_ms": bad}, {})
    with pytest.raises(ValueError):
        egress.set_delay_ms(-1)


async def test_frames_leave_their_delay_after_handover_and_stay_in_flight_together(delayed: None) -> None:
    arrivals: list[tuple[str, float]] = []

    async def handler(frame: Frame, _reply: object) -> None:
        assert isinstance(frame, Error)
        arrivals.append((frame.session, time.monotonic()))

    runner, url = await start_server(lambda app: app.router.add_get(STAGE_PATH, frame_endpoint(handler)))
    links = Links()
    try:
        await links.send(url, Error("warm", "x", "connects the link"))
        handed: dict[str, float] = {}
        sends = []
        for index in range(10):
            handed[f"s{index}"] = time.monotonic()
            sends.append(asyncio.ensure_future(links.send(url, Error(f"s{index}", "x", "y"))))
            await asyncio.sleep(0.005)
        await asyncio.gather(*sends)
        for _ in range(200):
            if len(arrivals) == 11:
                break
            await asyncio.sleep(0.01)
    finally:
        await links.close()
        await runner.cleanup()
    got = dict(arrivals)
    assert list(got) == ["warm", *handed]  # in order
    for session, at in handed.items():
        assert got[session] - at >= DELAY_MS / 1000 - 0.002, session  # each waited out the delay
    # Held, not serialised: ten frames one delay each would take 1.5 s; in flight together they
    # all arrive about one delay after the first was handed over.
    assert got["s9"] - handed["s0"] < 4 * DELAY_MS / 1000


async def test_a_probe_measures_the_delay_of_both_ends(delayed: None) -> None:
    runner, url = await start_server(lambda app: app.router.add_get(probe.PROBE_PATH, probe.probe_endpoint))
    try:
        async with aiohttp.ClientSession() as session:
            _mbps, rtt_ms = await probe.measure_link(session, url, download=4096)
    finally:
        await runner.cleanup()
    assert rtt_ms >= 2 * DELAY_MS - 2  # the request's way out here, the answer's there (one process plays both)


async def test_without_a_delay_nothing_waits() -> None:
    assert egress.delay_ms() == 0
    started = time.monotonic()
    await egress.hold()
    await egress.until(egress.release_time())
    assert time.monotonic() - started < 0.05


def test_what_a_peer_sends_to_its_own_host_is_not_delayed(delayed: None) -> None:
    egress.set_delay_ms(DELAY_MS, local=["198.18.0.1", "127.0.0.1"])
    now = time.monotonic()
    assert egress.release_time("http://198.18.0.1:7420/origin") - now < 0.01  # its origin, its own stage
    assert egress.release_time("127.0.0.1") - now < 0.01  # an inbound link's remote address
    assert egress.release_time("http://198.18.0.2:7420") - now >= DELAY_MS / 1000 - 0.001
    assert egress.release_time(None) - now >= DELAY_MS / 1000 - 0.001  # a probe: never to itself
