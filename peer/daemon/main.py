"""`edgeshard-peer`: the daemon one runs on every device (by hand, or as the systemd service).

Settings come from /etc/edgeshard/peer.toml (or --config), EDGESHARD_PEER_* variables, then
flags. Under systemd (Type=notify) it reports READY=1 once it serves, and WATCHDOG=1 from its
event loop when the unit has WatchdogSec= (`service`).

SIGTERM and SIGINT stop it gracefully (`stop`): STOPPING=1; the API refuses new requests (503
`shutting_down`) while those generating here finish, for up to `DRAIN_S` less `STAGE_DRAIN_S`;
then the peer leaves the cluster (its own death certificate pushed to every peer, an mDNS
goodbye), so the others re-plan at once instead of waiting out the failure detector, and the
sessions passing through its stage fail over at their origins; once they are gone (or
`STAGE_DRAIN_S` has passed) it closes and exits 0. A second signal cuts the waits short.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edgeshard.discovery.probe import emulate_delay
from edgeshard.solver import OBJECTIVES, STRATEGIES

from ..errors import PeerError
from ..model.options import COMPILE_CHOICES, COMPILE_HELP, KV_FORMS, PEER_WEIGHTS_HELP, use_compile_mode, weights
from ..pipeline import egress
from .config import DEFAULT_CONFIG, ENV_PREFIX, ConfigError, PeerConfig, load_config, split_host_port
from .service import DRAIN_S, STAGE_DRAIN_S, notify, start_watchdog, stop_task, wait_until

if TYPE_CHECKING:
    from .node import PeerNode

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
    add("--weights", type=weights, help=PEER_WEIGHTS_HELP + " (default auto)")
    add("--compile", choices=COMPILE_CHOICES, help=COMPILE_HELP + " (default auto)")
    add("--max-memory", metavar="BYTES", help="cap on the memory for units, e.g. 6GiB")
    add("--cache-dir", metavar="DIR", help="converted tensors, tokenizer, device profile")
    add("--context", type=int, help="KV cache positions per session (default 2048)")
    add("--sessions", type=int, help="concurrent sessions per stage, batched together (default 8)")
    add("--kv-cache", choices=KV_FORMS, help="KV cache: float (the compute dtype) or int8 (default float)")
    add(
        "--prefix-cache",
        type=int,
        metavar="TOKENS",
        help="tokens of finished KV kept for reuse (4096; 0: off)",
    )
    add("--queue", type=int, help="requests that wait for a session here; more get 429 (default 32)")
    # The flags without "-s" are the names before durations carried their unit; they still work.
    add("--dead-after-s", "--dead-after", type=float, metavar="S", help="silence before a peer is declared dead (10)")
    add("--gossip-interval-s", "--gossip-interval", type=float, metavar="S", help="seconds between gossip rounds (1)")
    add("--reprofile", action="store_const", const=True, help="measure this device again (ignore the cached profile)")
    add("--emulate-slowdown", type=float, metavar="F", help="testbed only: stretch compute by factor F")
    add("--emulate-delay-ms", type=float, metavar="MS", help="testbed only: delay what this peer sends to peers")
    add("--secret-file", metavar="FILE", help="the cluster secret (`edgeshard init --out FILE`); without: open cluster")
    add("--state-dir", metavar="DIR", help="this peer's key, id and incarnation (one peer per directory)")
    add("--api-key", metavar="KEY", help="bearer token the API requires (needed when --api-listen is not loopback)")
    add("--tls", action="store_const", const=True, help="encrypt peer traffic (needs --secret-file)")
    add("--log-level", choices=["debug", "info", "warning", "error"])
    return parser


async def serve(config: PeerConfig) -> None:
    """Run the peer until SIGTERM/SIGINT, then stop it gracefully."""
    from .node import PeerNode  # torch and transformers load here, after the arguments are checked

    node = PeerNode(config)
    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()  # a first signal stops, a second hurries

    def on_signal() -> None:
        (hurry if stop.is_set() else stop).set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    watchdog = None
    try:
        await node.start()
        notify("READY=1")
        watchdog = start_watchdog()
        running = asyncio.create_task(node.run())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            stopping.cancel()
            running.result()  # a crash of the peer's loops: raise it
        await graceful_stop(node, running, hurry)
    finally:
        await stop_task(watchdog)
        await node.close()


async def graceful_stop(node: PeerNode, running: asyncio.Task[None], hurry: asyncio.Event) -> None:
    """Refuse new requests, let ours finish, leave the cluster, let our stage's sessions go."""
    notify("STOPPING=1")
    deadline = time.monotonic() + DRAIN_S
    admission = node.api.admission
    admission.close()
    log.info("stopping: refusing new requests; %d generating here may finish", admission.active)
    if not await wait_until(lambda: admission.active == 0, deadline - STAGE_DRAIN_S, hurry):
        log.warning("stopping: %d requests still generating here are cut off", admission.active)
    running.cancel()  # gossip, plans and probes end: our record changes no more
    with contextlib.suppress(asyncio.CancelledError):
        await running
    told = await node.leave()
    log.info("left the cluster: %d peer(s) told directly, mDNS goodbye sent", told)
    if not await wait_until(lambda: not node.stage.busy(), deadline, hurry):
        log.warning("stopping: %d sessions still pass through this stage", node.stage.status()["sessions"])
    log.info("stopped")


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
    use_compile_mode(config.compile)  # read where the shards are made (model/compiled.py)
    own = {split_host_port(config.listen, 0)[0], config.advertise, "127.0.0.1", "::1", "localhost"} - {""}
    egress.set_delay_ms(config.emulate_delay_ms, own)  # one peer a process: the emulated host's way out
    emulate_delay(egress.hold)  # probes measure it too
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
