"""`edgeshard-peer`: the daemon one runs on every device (by hand, or as the systemd service).

Settings come from /etc/edgeshard/peer.toml (or --config), EDGESHARD_PEER_* variables, then
flags. SIGTERM and SIGINT stop it cleanly: mDNS goodbye, sockets closed, so the others re-plan
at once instead of waiting out the failure detector. Under systemd (Type=notify) it reports
READY=1 once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from edgeshard.solver import OBJECTIVES, STRATEGIES

from ..errors import PeerError
from ..model.options import DTYPE_NAMES
from .config import DEFAULT_CONFIG, ENV_PREFIX, ConfigError, PeerConfig, load_config

log = logging.getLogger("edgeshard.peer")


def build_parser() -> argparse.ArgumentParser:
    """The flags; every one defaults to None so that file and environment settings show through."""
    parser = argparse.ArgumentParser(
        prog="edgeshard-peer",
        description="Run one EdgeShard peer: find the others, agree on a plan, serve a shard and the API.",
    )
    add = parser.add_argument
    add("--config", metavar="FILE", help=f"TOML settings (default {DEFAULT_CONFIG} when it exists)")
    add("--name", help="this peer's label in logs and status (default: the host name)")
    add("--listen", metavar="HOST:PORT", help="peer traffic (default 0.0.0.0:7420)")
    add("--api-listen", metavar="HOST:PORT", help="the OpenAI-compatible API (default 127.0.0.1:7421)")
    add("--advertise", metavar="HOST", help="address the other peers reach this one at")
    add("--model", help="'default' (SmolLM2-135M-Instruct), a .gguf file, or a HF model directory")
    add("--bootstrap", metavar="HOST:PORT,...", help="peers to contact directly (when multicast does not pass)")
    add("--no-mdns", dest="mdns", action="store_const", const=False, help="no mDNS announce/browse")
    add("--interface", metavar="ADDR,...", help="IPv4 address(es) mDNS uses (default: all)")
    add("--objective", choices=OBJECTIVES, help="what the plan minimises (default latency)")
    add("--strategy", choices=STRATEGIES, help=argparse.SUPPRESS)  # benchmarks: run a baseline's plan
    add("--source", action="store_const", const=True, help="host stage 0 on this device")
    add("--cluster", metavar="NAME", help="only peers of this cluster name join (default 'default')")
    add("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    add("--dtype", choices=DTYPE_NAMES, help="compute dtype (default float32)")
    add("--max-memory", metavar="BYTES", help="cap on the memory for units, e.g. 6GiB")
    add("--cache-dir", metavar="DIR", help="converted tensors, tokenizer, device profile")
    add("--context", type=int, help="KV cache positions per session (default 2048)")
    add("--sessions", type=int, help="concurrent sessions per stage, batched together (default 8)")
    add("--queue", type=int, help="requests that wait for a session here; more get 429 (default 32)")
    # The flags without "-s" are the names before durations carried their unit; they still work.
    add("--dead-after-s", "--dead-after", type=float, metavar="S", help="silence before a peer is declared dead (10)")
    add("--gossip-interval-s", "--gossip-interval", type=float, metavar="S", help="seconds between gossip rounds (1)")
    add("--reprofile", action="store_const", const=True, help="measure this device again (ignore the cached profile)")
    add("--emulate-slowdown", type=float, metavar="F", help="testbed only: stretch compute by factor F")
    add("--secret-file", metavar="FILE", help="the cluster secret (`edgeshard init --out FILE`); without: open cluster")
    add("--state-dir", metavar="DIR", help="this peer's key, id and incarnation (one peer per directory)")
    add("--api-key", metavar="KEY", help="bearer token the API requires (needed when --api-listen is not loopback)")
    add("--tls", action="store_const", const=True, help="encrypt peer traffic (needs --secret-file)")
    add("--log-level", choices=["debug", "info", "warning", "error"])
    return parser


def _notify(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if systemd set it."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), address)


async def serve(config: PeerConfig) -> None:
    """Run the peer until SIGTERM/SIGINT."""
    from .node import PeerNode  # torch and transformers load here, after the arguments are checked

    node = PeerNode(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await node.start()
        _notify("READY=1")
        running = asyncio.create_task(node.run())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()  # a crash of the peer's loops: raise it
        log.info("stopping")
        _notify("STOPPING=1")
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    finally:
        await node.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edgeshard-peer`."""
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config") or os.environ.get(ENV_PREFIX + "CONFIG")
    for key in ("bootstrap", "interface"):
        if args[key] is not None:
            args[key] = [item for item in args[key].split(",") if item]
    try:
        config = load_config(args, os.environ, config_file)
    except ConfigError as error:
        print(f"edgeshard-peer: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(config))
    except PeerError as error:
        log.error("%s", error)
        return 1
    except OSError as error:  # e.g. the port is taken
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
