"""`edgeshard chat`: a chat REPL, against a running peer's API (`--api`) or over a local cluster
of stage servers started for the session (kept up between turns). The loop and its commands are
`repl.py`'s, the tables `render.py`'s; here are the options and the two backends."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..api.client import ApiError, chat_stream, get_status, texts
from ..errors import PeerError
from ..model.options import COMPILE_CHOICES, COMPILE_HELP, DEFAULT_MODEL, WEIGHT_CHOICES, WEIGHTS_HELP, use_compile_mode
from .render import ReplyStats, describe_error, render_local_plan, render_peers, render_plan
from .repl import HELP, MAX_TEMPERATURE, Reader, Repl, Settings, Show, read_plain_line, terminal_reader

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..pipeline.local import LocalCluster

STATUS_TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edgeshard chat`."""
    parser.add_argument(
        "--api",
        metavar="URL",
        help="chat through a running edgeshard-peer's API (e.g. http://127.0.0.1:7421) instead of local stages",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("EDGESHARD_API_KEY", ""),
        help="the peer's API key, with --api (default: $EDGESHARD_API_KEY)",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--processes", action="store_true", help="each stage in its own OS process")
    parser.add_argument("--system", help="system prompt (default: the model's own)")
    parser.add_argument("--max-tokens", type=int, default=256, help="per answer")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (greedy) to 2; /temperature changes it")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto", help=WEIGHTS_HELP)
    parser.add_argument("--compile", choices=COMPILE_CHOICES, help=COMPILE_HELP + " (default auto)")
    parser.add_argument("--device", default="auto")


class ApiBackend:
    """Replies streamed from a peer's /v1/chat/completions; /plan and /peers from its /v1/status."""

    def __init__(self, api: str, api_key: str = "") -> None:
        self.api = api
        self.api_key = api_key
        self.names: dict[str, str] = {}  # stage URL → peer name, from the last status

    async def status(self) -> dict[str, Any]:
        status = await asyncio.to_thread(get_status, self.api, STATUS_TIMEOUT_S, self.api_key)
        self.names = {p["address"]: p["name"] for p in status.get("peers") or () if p.get("address") and p.get("name")}
        return status

    async def reply(
        self, messages: list[dict[str, str]], settings: Settings, turn: int, show: Show, stats: ReplyStats
    ) -> str:
        stream = chat_stream(
            self.api,
            messages,
            settings.max_tokens,
            settings.temperature,
            settings.seed + turn,
            api_key=self.api_key,
            top_p=None if settings.top_p == 1.0 else settings.top_p,
        )
        reply = ""
        try:
            # Blocking reads on worker threads; cancelled, close() shuts the socket, which ends
            # the read waiting on its thread and tells the peer to free the session now.
            await asyncio.to_thread(stream.open)
            pieces = texts(stream)
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                reply += piece
                show(piece)
        finally:
            stream.close()
            usage = stream.usage or {}
            stats.tokens = usage.get("completion_tokens")
            stats.prompt_tokens = usage.get("prompt_tokens")
            stats.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            stats.edgeshard = stream.edgeshard
            stats.timing = (stream.edgeshard or {}).get("timing")
            stats.names = self.names
        return reply

    async def plan(self) -> str:
        return render_plan(await self.status())

    async def peers(self) -> str:
        return render_peers(await self.status())

    def describe_error(self, error: PeerError) -> str:
        return describe_error(error, self.api)


class LocalBackend:
    """Replies from stage servers in this process (the engine is loaded)."""

    def __init__(
        self, model: str, cluster: LocalCluster, tokenizer: PreTrainedTokenizerBase, stop_ids: Sequence[int]
    ) -> None:
        self.model = model
        self.cluster = cluster
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids

    async def reply(
        self, messages: list[dict[str, str]], settings: Settings, turn: int, show: Show, stats: ReplyStats
    ) -> str:
        from ..model.text import TextStream, chat_ids
        from ..pipeline.timing import StepTiming, summarize
        from ..wire import SamplingParams

        ids = chat_ids(self.tokenizer, messages)
        sampling = SamplingParams(settings.temperature, 0, settings.top_p, settings.seed + turn)
        text = TextStream(self.tokenizer)
        stats.where = "this process"
        count = 0
        origin, route = self.cluster.origin, self.cluster.route
        steps: list[StepTiming] = []
        reused: list[int] = []
        stats.prompt_tokens = len(ids)
        # Closed also when Ctrl-C cancels the turn: the origin sends the session's Close.
        async with contextlib.aclosing(
            origin.generate(route, ids, sampling, settings.max_tokens, self.stop_ids, timings=steps, reused=reused)
        ) as tokens:
            async for token in tokens:
                stats.cached_tokens = reused[0] if reused else 0
                count += 1
                stats.tokens = count
                if new := text.add(token):
                    show(new)
        if tail := text.text[len(text.shown) :]:
            show(tail)
        stats.timing = summarize(steps, {url: f"stage {index}" for index, url in enumerate(route)})
        return text.text

    async def plan(self) -> str:
        return render_local_plan(self.model, self.cluster.ranges, self.cluster.route)

    async def peers(self) -> str:
        return "local mode: no peers, the stages run in this process (/plan lists them)"

    def describe_error(self, error: PeerError) -> str:
        return describe_error(error)


async def _read_line(prompt: str) -> str | None:
    return await read_plain_line(prompt)


def _reader(interactive: bool) -> Reader:
    return terminal_reader() if interactive else (lambda prompt: _read_line(prompt))


def _settings(args: argparse.Namespace) -> Settings:
    if not (0.0 <= args.temperature <= MAX_TEMPERATURE) or math.isnan(args.temperature):
        raise PeerError(f"--temperature: from 0 to {MAX_TEMPERATURE:g}")
    if args.max_tokens < 1:
        raise PeerError("--max-tokens: at least 1")
    return Settings(args.system, args.temperature, args.max_tokens, args.top_p, args.seed)


async def run_chat(args: argparse.Namespace, interactive: bool = False) -> None:
    """The REPL over stage servers started for the session."""
    # The engine loads here: `edgeshard chat --api` never imports torch.
    from ..model.devices import pick_device, resolve_form
    from ..model.files import open_model
    from ..model.shard import even_split, unit_count
    from ..model.text import stop_token_ids
    from ..pipeline.local import LocalCluster

    settings = _settings(args)
    if args.compile:
        use_compile_mode(args.compile)
    source = open_model(args.model)
    ranges = even_split(unit_count(source.config), args.stages)
    device = pick_device(args.device)
    weights = resolve_form(args.weights, device)
    async with LocalCluster(
        args.model, ranges, processes=args.processes, weights=weights, device=device, source=source
    ) as cluster:
        print(f"{len(ranges)} stages: {', '.join(f'[{a}, {b})' for a, b in ranges)}. {HELP}", file=sys.stderr)
        backend = LocalBackend(args.model, cluster, source.tokenizer(), stop_token_ids(source.config))
        await Repl(backend, settings, _reader(interactive), interactive).run()


async def run_api_chat(args: argparse.Namespace, interactive: bool = False) -> None:
    """The same REPL, each answer streamed from a peer's /v1/chat/completions."""
    settings = _settings(args)
    backend = ApiBackend(args.api, args.api_key)
    try:
        status = await backend.status()
    except ApiError as error:
        if error.unreachable or error.status == 401:
            raise PeerError(backend.describe_error(error)) from None
        status = {"ready": False, "reason": str(error)}
    name = status.get("name") or status.get("peer") or args.api
    print(f"chatting through {args.api} (peer {name}). {HELP}", file=sys.stderr)
    if not status.get("ready"):
        print(f"(the cluster is not ready yet: {status.get('reason')}; /plan and /peers show it)", file=sys.stderr)
    await Repl(backend, settings, _reader(interactive), interactive).run()


def main(args: argparse.Namespace) -> int:
    """Run `edgeshard chat`."""
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    asyncio.run(run_api_chat(args, interactive) if args.api else run_chat(args, interactive))
    return 0
