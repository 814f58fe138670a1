"""edgeshard-peer as a service: run the way systemd runs it (Type=notify, a watchdog, SIGTERM), a
graceful stop under load in a real cluster, and scripts/install-peer into a scratch root.

Real processes on loopback and real signals; the notifications arrive on a unix datagram socket
this test binds, as systemd's would.
"""

from __future__ import annotations

import itertools
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .peers import Peer, agreed, client, make_peers, post_chat, running, start_all, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STORY = "Write a long story about a dragon who guards a library."
MODEL = "smollm2-135m-instruct"
WATCHDOG_USEC = 2_000_000  # keep-alives every second


class Notifications:
    """What the peer tells "systemd": every datagram on the socket, with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.received: list[tuple[float, str]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(256)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), data.decode()))

    def times(self, state: str, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return [t for t, s in list(self.received) if s == state and since <= t < until]

    def close(self) -> None:
        self._closed = True
        self._thread.join(5)
        self.sock.close()


def stream_tokens(peer: Peer, message: str, max_tokens: int, on_chunk: Any = None) -> tuple[list[int], Any]:
    """A greedy streamed chat through `peer`'s API: the token ids and the last chunk's extra."""
    stream = client(peer).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": message}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
    )
    count, last = 0, None
    for chunk in stream:
        count, last = count + 1, chunk
        if on_chunk is not None:
            on_chunk(count)
    assert last is not None
    extra = last.model_extra["edgeshard"]
    return extra["token_ids"], extra


# --- one peer, as systemd runs it ---------------------------------------------------------------


@pytest.fixture(scope="module")
def systemd_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Peer, Notifications]]:
    """One peer that holds the whole model, started with NOTIFY_SOCKET and WATCHDOG_USEC."""
    tmp = tmp_path_factory.mktemp("service")
    notes = Notifications(tmp / "notify")
    peer = make_peers(tmp, 1, mdns=False, extra=["--max-memory", "2GiB"])[0]
    peer.env.update(NOTIFY_SOCKET=str(notes.path), WATCHDOG_USEC=str(WATCHDOG_USEC))
    try:
        start_all([peer])
        yield peer, notes
    finally:
        peer.stop()
        notes.close()


def test_ready_then_keep_alives_from_the_event_loop(systemd_peer: tuple[Peer, Notifications]) -> None:
    peer, notes = systemd_peer
    wait_until(lambda: notes.times("READY=1") or None, 30, "READY=1", [peer])
    ready = notes.times("READY=1")[0]
    time.sleep(3.5)
    beats = notes.times("WATCHDOG=1", since=ready)
    assert len(beats) >= 3, notes.received
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert max(gaps) < WATCHDOG_USEC / 1e6, gaps  # always within the watchdog's timeout
    assert notes.received[0][1] == "READY=1"  # nothing before READY=1


def test_a_wedged_peer_stops_the_keep_alives(systemd_peer: tuple[Peer, Notifications]) -> None:
    """A stopped process stands for a wedged event loop (tests/daemon/test_service_logic shows a
    blocked loop stops them while a busy worker thread does not): no WATCHDOG=1 for longer than
    the watchdog's timeout, so systemd would restart it; they resume when it runs again."""
    peer, notes = systemd_peer
    peer.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        time.sleep(3.0)
    finally:
        resumed = time.monotonic()
        peer.signal(signal.SIGCONT)
    assert notes.times("WATCHDOG=1", since=stopped + 0.1, until=resumed) == []
    wait_until(lambda: notes.times("WATCHDOG=1", since=resumed) or None, 5, "keep-alives to resume", [peer])


def test_sigterm_finishes_the_chat_in_flight_refuses_new_ones_and_exits_0(
    systemd_peer: tuple[Peer, Notifications],
) -> None:
    peer, notes = systemd_peer
    undisturbed, _extra = stream_tokens(peer, STORY, 48)
    assert len(undisturbed) > 20
    refused: dict[str, Any] = {}
    terminated: list[float] = []

    def stop_mid_stream(count: int) -> None:
        if count == 6:
            terminated.append(time.monotonic())
            peer.signal(signal.SIGTERM)
            wait_until(lambda: notes.times("STOPPING=1") or None, 10, "STOPPING=1", [peer])
            refused["reply"] = post_chat(peer, "Hello?", 4, timeout_s=30)

    tokens, extra = stream_tokens(peer, STORY, 48, stop_mid_stream)
    assert tokens == undisturbed and extra["failovers"] == []  # the request in flight finished
    status, _headers, body = refused["reply"]
    assert status == 503 and '"code": "shutting_down"' in body.replace('":"', '": "'), body
    assert peer.process is not None
    assert peer.process.wait(30) == 0
    stopping = notes.times("STOPPING=1")
    assert len(stopping) == 1 and stopping[0] >= terminated[0]
    log = peer.log()
    assert "stopping: refusing new requests; 1 generating here may finish" in log
    assert "left the cluster" in log and "stopped" in log


# --- a graceful stop under load in a cluster ----------------------------------------------------


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Peer]]:
    """Three peers, any two of which hold the model (512 MiB each); planned for throughput, so all
    three are stages (a smaller bottleneck) and a middle stage can leave without the model
    no longer fitting."""
    peers = make_peers(
        tmp_path_factory.mktemp("stop"), 3, extra=["--max-memory", "512MiB", "--objective", "throughput"]
    )
    with running(peers):
        yield peers


def test_a_middle_stage_stopped_under_load_leaves_at_once_and_the_chat_loses_nothing(three: list[Peer]) -> None:
    plan = agreed(three)
    assert plan is not None and len(plan["stages"]) == 3, plan
    middle = next(p for p in three if p.name == plan["stages"][1]["device"])
    asker = next(p for p in three if p.name == plan["stages"][0]["device"])
    others = [p for p in three if p is not middle]
    middle_status = middle.status()
    assert middle_status is not None
    middle_id = middle_status["peer"]
    undisturbed, _extra = stream_tokens(asker, STORY, 64)
    assert len(undisturbed) > 30, "the model must keep talking past the stop"

    seen: dict[str, float] = {}

    def watch() -> None:  # when each survivor saw the middle go, and when they agreed without it
        while "replanned" not in seen and time.monotonic() - seen.get("terminated", time.monotonic()) < 60:
            statuses = [p.status() for p in others]
            now = time.monotonic()
            if all(s is not None and middle.name not in {q["name"] for q in s["peers"]} for s in statuses):
                seen.setdefault("dropped", now)
            plan = agreed(others)
            if plan is not None and middle.name not in {s["device"] for s in plan["stages"]}:
                seen["replanned"] = now
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)

    def stop_mid_stream(count: int) -> None:
        if count == 12:
            seen["terminated"] = time.monotonic()
            middle.signal(signal.SIGTERM)
            watcher.start()

    tokens, extra = stream_tokens(asker, STORY, 64, stop_mid_stream)
    watcher.join(90)
    assert middle.process is not None and middle.process.wait(30) == 0
    assert tokens == undisturbed  # greedy: exactly the undisturbed run's tokens
    assert len(extra["failovers"]) == 1, extra["failovers"]
    dead_after_s = 10.0  # the failure detector's default
    dropped, replanned = seen["dropped"] - seen["terminated"], seen["replanned"] - seen["terminated"]
    print(
        f"\nSIGTERM → the survivors drop the peer in {dropped:.2f} s, agree on a plan without it in {replanned:.2f} s"
    )
    assert replanned < dead_after_s / 2
    assert "left the cluster: 2 peer(s) told directly" in middle.log()
    for peer in others:  # they learnt it from its leave, not from a refused connection or silence
        assert "refused a connection" not in peer.log()
        assert f"peer {middle_id} left" in peer.log()


# --- scripts/install-peer -----------------------------------------------------------------------


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(ROOT / "scripts" / "install-peer"), "--root", str(root), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def snapshot(root: Path) -> dict[str, tuple[int, int, float]]:
    """Every path under `root` with its size, mode and modification time (the venv's caches aside)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or path.is_symlink():
            continue
        stat = path.stat()
        found[str(path.relative_to(root))] = (stat.st_size, stat.st_mode, stat.st_mtime)
    return found


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_install_twice_changes_nothing_the_unit_verifies_and_uninstall_removes_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    venv = str(Path(sys.executable).parent.parent)  # this environment's torch: nothing downloaded
    first = install(root, "--venv-from", venv)
    assert first.returncode == 0, first.stdout + first.stderr
    unit = root / "etc/systemd/system/edgeshard-peer.service"
    assert unit.read_text() == (ROOT / "systemd/edgeshard-peer.service").read_text()
    assert "WatchdogSec=" in unit.read_text()
    assert (root / "etc/edgeshard/peer.toml").read_text() == (ROOT / "systemd/peer.toml").read_text()
    installed_secret = root / "etc/edgeshard/cluster.secret"
    assert installed_secret.stat().st_mode & 0o777 == 0o600 and installed_secret.stat().st_size > 0
    assert "cluster secret: made" in first.stdout and "not started (installed under --root" in first.stdout
    peer_command = root / "opt/edgeshard/venv/bin/edgeshard-peer"
    assert subprocess.run([str(peer_command), "--help"], capture_output=True, timeout=120).returncode == 0

    before = snapshot(root)
    second = install(root, "--venv-from", venv)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing to do: everything was installed already" in second.stdout, second.stdout
    assert snapshot(root) == before

    # A secret given with --secret-file (the first device's) replaces the one made.
    secret = tmp_path / "cluster.secret"
    secret.write_text("x" * 44 + "\n")
    third = install(root, "--venv-from", venv, "--secret-file", str(secret))
    assert third.returncode == 0 and "cluster secret: installed" in third.stdout, third.stdout
    assert installed_secret.read_text() == secret.read_text()
    assert installed_secret.stat().st_mode & 0o777 == 0o600

    # The unit as installed, checked by systemd against this root (its own units copied beside it).
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    verify = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "edgeshard-peer.service"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr

    uninstall = install(root, "--uninstall")
    assert uninstall.returncode == 0, uninstall.stderr
    assert not unit.exists() and not (root / "opt/edgeshard").exists()
    assert installed_secret.exists()  # kept without --purge
    purge = install(root, "--uninstall", "--purge")
    assert purge.returncode == 0 and not (root / "etc/edgeshard").exists()
    again = install(root, "--uninstall", "--purge")
    assert "nothing to do: nothing was installed" in again.stdout
