"""The service's pure parts: sd_notify, the watchdog interval and keep-alives (a blocked loop stops
them, a busy worker thread does not), the bounded waits, admission closing, and a leave
certificate in the membership view."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from edgeshard.discovery.gossip import Gossip
from edgeshard.discovery.membership import Membership
from edgeshard.discovery.records import PeerId
from edgeshard.peer.api.admission import Admission, ShuttingDown
from edgeshard.peer.daemon.probing import LinkFigures
from edgeshard.peer.daemon.roster import Roster
from edgeshard.peer.daemon.service import keep_alive, notify, wait_until, watchdog_interval_s
from edgeshard.peer.pipeline.origin import Origin

from tests.discovery.signed import record, signed


def test_the_watchdog_interval_is_half_of_what_systemd_asks_and_only_for_us() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, pid=7) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, pid=7) == 1.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "8"}, pid=7) is None  # another's
    assert watchdog_interval_s({}, pid=7) is None
    for bad in ("0", "", "-5", "1e6", "soon"):
        assert watchdog_interval_s({"WATCHDOG_USEC": bad}, pid=7) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "x"}, pid=7) is None


def test_notify_sends_one_datagram_to_the_socket_systemd_names(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(5)
        assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert sock.recv(64) == b"READY=1"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:  # "@": the abstract namespace
        name = f"edgeshard-test-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(64) == b"STOPPING=1"
    assert not notify("READY=1", {})  # not under systemd
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not notify("READY=1", {"NOTIFY_SOCKET": "relative/path"})


async def test_keep_alives_stop_while_the_loop_is_blocked_not_while_a_worker_thread_computes() -> None:
    sent: list[float] = []
    task = asyncio.create_task(keep_alive(0.05, lambda _state: sent.append(time.monotonic())))
    try:
        await asyncio.sleep(0.3)
        assert len(sent) >= 3
        # A long forward pass runs on the stage's worker thread: the loop stays free, keep-alives go on.
        before = len(sent)
        await asyncio.to_thread(time.sleep, 0.5)
        assert len(sent) - before >= 5
        # A wedged loop (a blocking call on it): nothing is sent until it is free again.
        blocked_at = time.monotonic()
        time.sleep(0.6)
        freed_at = time.monotonic()
        await asyncio.sleep(0.2)
        assert not [t for t in sent if blocked_at < t < freed_at]
        assert any(t >= freed_at for t in sent)  # and they resume
    finally:
        task.cancel()


async def test_bounded_waits_end_when_done_at_the_deadline_or_when_hurried() -> None:
    assert await wait_until(lambda: True, time.monotonic() - 1)
    started = time.monotonic()
    assert not await wait_until(lambda: False, started + 0.3)
    assert 0.25 < time.monotonic() - started < 2.0
    hurry = asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, hurry.set)
    started = time.monotonic()
    assert not await wait_until(lambda: False, started + 30, hurry)
    assert time.monotonic() - started < 2.0
    flag: list[bool] = []
    asyncio.get_running_loop().call_later(0.2, flag.append, True)
    assert await wait_until(lambda: bool(flag), time.monotonic() + 30)


async def test_a_closed_admission_refuses_new_and_queued_requests_and_lets_generating_ones_finish() -> None:
    admission = Admission(capacity=1, queue_bound=4)
    release = asyncio.Event()
    outcomes: list[str] = []

    async def request(name: str) -> None:
        try:
            async with admission.slot():
                await release.wait()
                outcomes.append(name + " finished")
        except ShuttingDown:
            outcomes.append(name + " refused")

    generating = asyncio.create_task(request("a"))
    await asyncio.sleep(0.01)
    queued = asyncio.create_task(request("b"))
    await asyncio.sleep(0.01)
    assert (admission.active, admission.queued) == (1, 1)
    admission.close()
    await queued
    assert outcomes == ["b refused"] and admission.queued == 0
    await request("c")
    assert outcomes[-1] == "c refused"
    release.set()
    await generating
    assert outcomes[-1] == "a finished" and admission.active == 0


def test_a_leave_certificate_removes_the_peer_everywhere_and_its_record_freezes() -> None:
    leaving, other = Membership(record("a")), Membership(record("b"))
    other.apply([leaving.beat()], now=0.0)
    certificate = leaving.leave()
    assert certificate == leaving.own and leaving.obituaries[PeerId("a")] == certificate
    # From now on the leaver's record changes no more: no heartbeat, no announcement, no
    # refutation can outlive the certificate.
    assert leaving.beat() == certificate and leaving.announce(serving="x") == certificate
    leaving.apply([record("a", 1, 99)], now=1.0)  # a "newer life" of ours: not refuted any more
    assert leaving.own == certificate
    assert other.bury(leaving.obituaries.values()) == [PeerId("a")]
    assert "a" not in other.records
    other.apply([certificate], now=2.0)  # the leaver still answers gossip with its frozen record
    assert "a" not in other.records
    other.apply([record("a", 2, 0)], now=3.0)  # it comes back after a restart
    assert "a" in other.records


@pytest.mark.parametrize("usec", ["1", "999999999999"])
def test_extreme_watchdog_values_still_give_an_interval(usec: str) -> None:
    interval = watchdog_interval_s({"WATCHDOG_USEC": usec}, pid=1)
    assert interval is not None and interval == int(usec) / 2e6


async def test_an_mdns_goodbye_reaches_the_failure_detector_through_the_roster() -> None:
    """The daemon's wiring: mDNS `on_lost` → `Roster.lost` → one gossip check; a refused
    connection removes the peer and re-plans at once (a departure), a live one would stay."""
    with socket.socket() as sock:  # a port where nothing listens: the check is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    members = Membership(signed("me"))
    gone = signed("b", address=f"http://127.0.0.1:{port}")
    members.apply([gone], now=0.0)
    gossip = Gossip(members)
    origin = Origin()
    roster = Roster("home", members, gossip, LinkFigures(), origin)
    gossip.on_change = roster.changed
    try:
        roster.lost("not-a-member")
        assert not gossip._checks
        roster.lost(gone.peer_id)
        await asyncio.wait_for(roster.wake.wait(), 10)
        assert roster.departures == 1 and gone.peer_id not in members.records
        assert members.obituaries[gone.peer_id] == gone  # certified, so the others drop it too
    finally:
        await gossip.close()
        await origin.close()
