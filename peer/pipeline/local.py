"""A local cluster: N stage servers on loopback (threads of this process, or OS processes).

This is what `edgeshard generate` and the engine benchmark run: every stage is a real aiohttp
server on its own socket, links are real WebSockets, only the host is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web

from ..errors import StageError
from ..model.compute import colocated_environment, on_compute
from ..model.files import ModelSource, open_model
from ..model.grammar import source_grammars
from ..model.options import KVForm, WeightForm
from ..model.shard import Shard
from .origin import Origin
from .servers import start_server
from .stage import StageServer

PROCESS_START_TIMEOUT_S = 600.0


@dataclass
class LocalCluster:
    """Stages for the given unit ranges, and an origin to drive them."""

    model: str
    ranges: list[tuple[int, int]]
    processes: bool = False
    weights: WeightForm = "float32"
    device: str = "cpu"
    source: ModelSource | None = None  # threads mode: share one opened model
    prefix_tokens: int = 4096  # each stage's prefix cache (0: off, and the origin does not ask)
    kv_cache: KVForm = "float"
    route: list[str] = field(default_factory=list)
    origin: Origin = field(default_factory=Origin)
    _runners: list[web.AppRunner] = field(default_factory=list)
    _stages: list[StageServer] = field(default_factory=list)
    _children: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def __aenter__(self) -> LocalCluster:
        self.origin.reuse_prefixes = self.prefix_tokens > 0
        try:
            if self.processes:
                await self._start_processes()
            else:
                await self._start_threads()
            runner, self.origin.url = await start_server(self.origin.add_routes)
            self._runners.append(runner)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _start_threads(self) -> None:
        source = self.source or open_model(self.model)
        self.origin.hidden_size = int(source.config.hidden_size)
        for start, end in self.ranges:
            build = partial(Shard, source, start, end, device=self.device, weights=self.weights)
            shard = await on_compute(partial(build, prefix_tokens=self.prefix_tokens, kv_cache=self.kv_cache))
            stage = StageServer(shard, max_sessions=shard.max_sessions, grammars=source_grammars(source))
            runner, url = await start_server(stage.add_routes)
            self._stages.append(stage)
            self._runners.append(runner)
            self.route.append(url)

    async def _start_processes(self) -> None:
        # Stage processes here share one host's cores: a short OpenMP spin (model/compute.py).
        environment = colocated_environment(os.environ)
        # Start all, then wait for all: the stages load in parallel.
        for start, end in self.ranges:
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edgeshard.peer.pipeline.stage_process",
                "--model",
                self.model,
                "--start",
                str(start),
                "--end",
                str(end),
                "--weights",
                self.weights,
                "--device",
                self.device,
                "--prefix-cache",
                str(self.prefix_tokens),
                "--kv-cache",
                self.kv_cache,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=environment,
                # Not in the terminal's process group: a Ctrl-C that stops a chat reply must not
                # stop the stages. They end with our stdin's EOF (or our SIGTERM) instead.
                start_new_session=True,
            )
            self._children.append(child)
        for child in self._children:
            assert child.stdout is not None
            try:
                line = await asyncio.wait_for(child.stdout.readline(), PROCESS_START_TIMEOUT_S)
            except TimeoutError:
                raise StageError("a stage process did not start in time") from None
            if not line:
                raise StageError(f"a stage process exited with status {await child.wait()}")
            self.route.append(json.loads(line)["url"])

    async def stage_status(self) -> list[dict[str, Any]]:
        """Each stage's /status (units, weight bytes, process RSS)."""
        if not self.processes:
            return [stage.status() | {"rss_bytes": None} for stage in self._stages]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            statuses = []
            for url in self.route:
                async with session.get(url + "/status") as response:
                    statuses.append(await response.json())
            return statuses

    async def close(self) -> None:
        """Stop the origin, the stages and any child processes."""
        await self.origin.close()
        for stage in self._stages:
            await stage.close()
        for runner in self._runners:
            await runner.cleanup()
        for child in self._children:
            if child.returncode is None:
                assert child.stdin is not None
                child.stdin.close()
                with contextlib.suppress(ProcessLookupError):
                    child.terminate()
        for child in self._children:
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()
                await child.wait()
        self._runners.clear()
        self._stages.clear()
        self._children.clear()
