"""One stage in its own OS process: `python -m edgeshard.peer.pipeline.stage_process --start A --end B`.

Prints one JSON line {"url", "pid", "load_s"} when it serves, then runs until stdin closes or
SIGTERM/SIGINT arrives (so a parent that dies takes its stages with it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from functools import partial

from ..model.compute import on_compute
from ..model.files import open_model
from ..model.grammar import source_grammars
from ..model.options import FORMS, KV_FORMS
from ..model.shard import Shard
from .servers import start_server
from .stage import StageServer


async def serve(args: argparse.Namespace) -> None:
    """Load the shard, serve it, stop on stdin EOF or a signal."""
    started = time.perf_counter()
    source = open_model(args.model)
    build = partial(Shard, source, args.start, args.end, device=args.device, weights=args.weights)
    shard = await on_compute(partial(build, prefix_tokens=args.prefix_cache, kv_cache=args.kv_cache))
    stage = StageServer(shard, max_sessions=shard.max_sessions, grammars=source_grammars(source))
    runner, url = await start_server(stage.add_routes, args.host, args.port)
    print(json.dumps({"url": url, "pid": os.getpid(), "load_s": time.perf_counter() - started}), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stdin = sys.stdin.fileno()
    loop.add_reader(stdin, lambda: None if os.read(stdin, 1 << 16) else stop.set())
    await stop.wait()
    with contextlib.suppress(Exception):
        await stage.close()
    await runner.cleanup()


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--end", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", choices=FORMS, default="float32")
    parser.add_argument("--kv-cache", choices=KV_FORMS, default="float")
    parser.add_argument("--prefix-cache", type=int, default=0, help="tokens of prefix cache (0: off)")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
