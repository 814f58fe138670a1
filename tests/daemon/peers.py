"""Real `edgeshard-peer` processes on loopback for the daemon tests (no fakes: sockets, mDNS, signals)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edgeshard.discovery.auth import write_secret
from edgeshard.peer.api.client import ApiError, get_status
from edgeshard.peer.model.compute import colocated_environment
from openai import OpenAI

T = TypeVar("T")

# 256 MiB per peer holds at most ~45% of the default model with this context: 3 peers are needed.
PEER_MEMORY = "256MiB"
CONTEXT = "512"
PREFIX_CACHE = "1024"  # tokens per stage: the default 4096 would not fit three such peers
START_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Peer:
    """One edgeshard-peer process."""

    name: str
    peer_port: int
    api_port: int
    log_path: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.peer_port}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        if self.process is not None:
            self.process.wait(30)  # reap a previous life (a restart after a kill)
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgeshard.peer.daemon", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=colocated_environment({**os.environ, **self.env}),  # peers sharing this host's cores
            )

    def status(self) -> dict[str, Any] | None:
        try:
            return get_status(self.api, timeout_s=5)
        except (ApiError, OSError, ValueError):
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def make_peers(
    tmp: Path,
    count: int,
    mdns: bool = True,
    cluster: str | None = None,
    extra: Sequence[str] = (),
    secret: Path | None = None,
    names: Sequence[str] = (),
    open_cluster: bool = False,
) -> list[Peer]:
    """`count` peers of one fresh cluster name; without mDNS each bootstraps from the previous one.
    They hold the cluster secret `secret` (default: one made in `tmp`), as installed peers do,
    unless `open_cluster`; each has its own state directory in `tmp`."""
    cluster = cluster or "test-" + secrets.token_hex(4)
    if secret is None and not open_cluster:
        secret = tmp / "cluster.secret"
        if not secret.exists():
            write_secret(secret)
    peers: list[Peer] = []
    for index in range(count):
        name = names[index] if names else f"p{index + 1}"
        peer_port, api_port = free_port(), free_port()
        args = [
            *(["--secret-file", str(secret)] if secret is not None else []),
            "--state-dir",
            str(tmp / f"state-{name}"),
            "--name",
            name,
            "--listen",
            f"127.0.0.1:{peer_port}",
            "--api-listen",
            f"127.0.0.1:{api_port}",
            "--cluster",
            cluster,
            "--max-memory",
            PEER_MEMORY,
            "--context",
            CONTEXT,
            "--sessions",
            "2",
            *("--prefix-cache", PREFIX_CACHE),
            # float32: the tests compare tokens with transformers' float32 and size plans by it
            *("--weights", "float32"),
            *extra,
        ]
        if mdns:
            args += ["--interface", "127.0.0.1"]
        else:
            args += ["--no-mdns"]
            if peers:
                args += ["--bootstrap", peers[-1].address]
        peers.append(Peer(name, peer_port, api_port, tmp / f"{name}.log", args))
    return peers


def record_tail(log: str, count: int = 30) -> str:
    """The last `count` log records, one line each: a traceback cannot crowd out the records
    that say what happened before it."""
    records = [line[:300] for line in log.splitlines() if line[:2].isdigit()]
    return "\n".join(records[-count:])


def wait_until(check: Callable[[], T | None], timeout: float, what: str, peers: Sequence[Peer] = ()) -> T:
    """Poll `check` until it returns a value; on timeout fail with the peers' log tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value is not None:
            return value
        for peer in peers:
            if peer.process is not None and peer.process.poll() is not None and not peer.extra.get("killed"):
                raise AssertionError(f"{peer.name} exited ({peer.process.returncode}):\n{peer.log()[-3000:]}")
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name}\n{record_tail(p.log())}" for p in peers)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


def agreed(peers: Sequence[Peer]) -> dict[str, Any] | None:
    """The common status plan when every peer is ready on the same plan and layout, else None."""
    statuses = [p.status() for p in peers]
    if not all(s is not None and s["ready"] for s in statuses):
        return None
    plans = {(s["plan"]["plan_id"], s["plan"]["layout_id"]) for s in statuses if s is not None}
    if len(plans) != 1:
        return None
    first = statuses[0]
    assert first is not None
    result: dict[str, Any] = first["plan"]
    return result


def ensure_child_cache() -> None:
    """Peers inherit EDGESHARD_CACHE from the test process (never the user's cache)."""
    assert os.environ.get("EDGESHARD_CACHE"), "tests.engine_fixtures sets EDGESHARD_CACHE"


@contextlib.contextmanager
def running(peers: list[Peer]) -> Iterator[list[Peer]]:
    """The peers started and agreed on a ready plan for the block; stopped after it, whatever happens."""
    try:
        start_all(peers)
        yield peers
    finally:
        for peer in peers:
            peer.stop()


def start_all(peers: Sequence[Peer]) -> dict[str, Any]:
    """Start every peer and wait until they agree on a ready plan (returned)."""
    ensure_child_cache()
    for peer in peers:
        peer.start()
    return wait_until(lambda: agreed(peers), 240, "the peers to agree on a ready plan", peers)


_CLIENTS: dict[tuple[str, float], OpenAI] = {}


def client(peer: Peer, timeout_s: float = 300) -> OpenAI:
    """The openai client against a peer's API (no retries: every failure is a finding). One per
    API and timeout, kept: a client dropped unclosed leaves its pooled sockets to the garbage
    collector, whose ResourceWarning fails whichever test happens to be running then."""
    key = (peer.api, timeout_s)
    if key not in _CLIENTS:
        _CLIENTS[key] = OpenAI(base_url=peer.api + "/v1", api_key="unused", max_retries=0, timeout=timeout_s)
    return _CLIENTS[key]


def post_chat(peer: Peer, message: str, max_tokens: int, timeout_s: float = 600) -> tuple[int, dict[str, str], str]:
    """A plain chat completion POST: status, headers and body, errors included."""
    body = json.dumps({"messages": [{"role": "user", "content": message}], "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(
        peer.api + "/v1/chat/completions", body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()
