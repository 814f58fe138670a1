"""`edgeshard cluster`: N real `edgeshard-peer` processes on this machine, one command.

Each peer is its own process with its own sockets, found by the others over real mDNS on the
loopback interface; nothing is shortcut, so this is the multi-device setup in miniature. The
command waits until every peer reports the same ready plan, prints it, then either answers one
chat message (`--chat`) and stops, or keeps the cluster up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeshard.solver import OBJECTIVES

from ..api.client import ApiError, describe_status, get_status, stream_chunks, texts
from ..errors import PeerError
from ..model.compute import colocated_environment
from ..model.options import COMPILE_CHOICES, COMPILE_HELP, PEER_WEIGHTS_HELP, weights

READY_TIMEOUT_S = 600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edgeshard cluster`."""
    parser.add_argument("--peers", type=int, default=3, help="how many peer processes (default 3)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-memory", metavar="BYTES", help="cap per peer, e.g. 256MiB (forces a split)")
    parser.add_argument("--context", type=int, default=512, help="KV positions per session (default 512)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="latency")
    parser.add_argument("--weights", type=weights, default="auto", help=PEER_WEIGHTS_HELP)
    parser.add_argument("--compile", choices=COMPILE_CHOICES, help=COMPILE_HELP + " (default: the peers' own, auto)")
    parser.add_argument("--sessions", type=int, default=4, help="concurrent sessions per stage (default 4)")
    parser.add_argument("--prefix-cache", type=int, metavar="TOKENS", help="the peers' --prefix-cache (their default)")
    parser.add_argument("--base-port", type=int, default=7430, help="peer i listens on base+2i, its API on base+2i+1")
    parser.add_argument("--logs", metavar="DIR", help="where the peers' logs go (default: a temporary folder)")
    parser.add_argument("--chat", metavar="MESSAGE", help="ask this, print the answer, stop the cluster")
    parser.add_argument("--max-tokens", type=int, default=160)


@dataclass
class LocalPeer:
    """One peer process of the local cluster."""

    name: str
    api: str
    command: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the process."""
        if self.process is not None and self.process.poll() is None:
            raise PeerError(f"{self.name} is running")
        if self.process is not None:
            self.process.wait()
        with self.log.open("ab") as log:
            # Peers here share one host's cores: a short OpenMP spin (model/compute.py).
            environment = colocated_environment(os.environ)
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=environment)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def start_peers(args: argparse.Namespace, logs: Path) -> list[LocalPeer]:
    """Start the peer processes (they find each other over mDNS on 127.0.0.1). They share a
    cluster secret made in `logs`, and each keeps its key in a state directory there."""
    from edgeshard.discovery.auth import write_secret

    cluster = "local-" + secrets.token_hex(3)
    secret = logs / "cluster.secret"
    if not secret.exists():
        write_secret(secret)
    peers = []
    for index in range(args.peers):
        name = f"peer{index + 1}"
        port = args.base_port + 2 * index
        command = [
            sys.executable,
            "-m",
            "edgeshard.peer.daemon",
            *("--name", name, "--listen", f"127.0.0.1:{port}", "--api-listen", f"127.0.0.1:{port + 1}"),
            *("--interface", "127.0.0.1", "--cluster", cluster, "--model", args.model),
            *("--context", str(args.context), "--sessions", str(getattr(args, "sessions", 4))),
            *("--objective", args.objective, "--weights", getattr(args, "weights", "auto")),
            *("--secret-file", str(secret), "--state-dir", str(logs / f"state-{name}")),
        ]
        if args.max_memory:
            command += ["--max-memory", args.max_memory]
        if getattr(args, "prefix_cache", None) is not None:
            command += ["--prefix-cache", str(args.prefix_cache)]
        if getattr(args, "compile", None):
            command += ["--compile", args.compile]
        peer = LocalPeer(name, f"http://127.0.0.1:{port + 1}", command, logs / f"{name}.log")
        peer.start()
        peers.append(peer)
    return peers


def wait_ready(peers: Sequence[LocalPeer], logs: Path, quiet: bool = False) -> dict[str, Any]:
    """Block until every peer is ready on one plan; returns the first peer's status."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    shown = ""
    while time.monotonic() < deadline:
        for peer in peers:
            if not peer.running:
                tail = peer.log.read_text(errors="replace")[-2000:]
                raise PeerError(f"{peer.name} exited:\n{tail}")
        statuses = []
        for peer in peers:
            with contextlib.suppress(ApiError):
                statuses.append(get_status(peer.api, timeout_s=5))
        layouts = {s["plan"]["layout_id"] for s in statuses if s["ready"] and s.get("plan")}
        if len(statuses) == len(peers) and all(s["ready"] for s in statuses) and len(layouts) == 1:
            return statuses[0]
        state = f"{len(statuses)}/{len(peers)} peers up, {sum(s['ready'] for s in statuses)} ready"
        if state != shown and not quiet:
            print(f"  {state}", file=sys.stderr)
            shown = state
        time.sleep(0.5)
    raise PeerError(f"the peers did not agree on a ready plan in {READY_TIMEOUT_S:.0f} s (logs in {logs})")


def stop_peers(peers: Sequence[LocalPeer]) -> None:
    """SIGTERM every peer (clean goodbye), then wait."""
    for peer in peers:
        if peer.process is not None and peer.running:
            peer.process.send_signal(signal.SIGTERM)
    for peer in peers:
        if peer.process is None:
            continue
        try:
            peer.process.wait(20)
        except subprocess.TimeoutExpired:
            peer.process.kill()
            peer.process.wait()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    """Run `edgeshard cluster`."""
    if not 1 <= args.peers <= 16:
        raise PeerError("--peers: from 1 to 16")
    # A process manager (or `timeout`) stops us with SIGTERM, a closed terminal with SIGHUP: stop
    # the peers as Ctrl-C does instead of leaving them running as orphans.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    logs = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="edgeshard-cluster-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"starting {args.peers} edgeshard-peer processes (logs in {logs})", file=sys.stderr)
    peers = start_peers(args, logs)
    try:
        status = wait_ready(peers, logs)
        print(describe_status(status))
        if args.chat:
            print(f"user: {args.chat}\nassistant: ", end="", flush=True)
            chunks = stream_chunks(peers[0].api, [{"role": "user", "content": args.chat}], args.max_tokens)
            for text in texts(chunks):
                print(text, end="", flush=True)
            print()
            return 0
        print(
            f"\nOpenAI-compatible API: {peers[0].api}/v1 (any peer's API works)\n"
            f"chat: edgeshard chat --api {peers[0].api}    status: edgeshard status --api {peers[0].api}\n"
            "Ctrl-C stops the cluster.",
            file=sys.stderr,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while all(peer.running for peer in peers):
                time.sleep(1)
        return 0
    finally:
        stop_peers(peers)
