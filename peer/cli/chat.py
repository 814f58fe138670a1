"""`edgeshard chat`: a chat REPL, against a running peer's API (`--api`) or over a local cluster
of stage servers started for the session (kept up between turns)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

from ..api.client import stream_chunks, texts
from ..errors import PeerError
from ..model.options import DEFAULT_MODEL, DTYPE_NAMES
from ..wire import SamplingParams

HELP = "commands: /reset (forget the conversation), /quit (or Ctrl-D)"


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
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32")
    parser.add_argument("--device", default="auto")


async def _read_line(prompt: str) -> str | None:
    try:
        return await asyncio.get_running_loop().run_in_executor(None, input, prompt)
    except EOFError:
        return None


Answer = Callable[[list[dict[str, str]], int], Awaitable[str]]


async def repl(system: str | None, answer: Answer) -> None:
    """Read messages, let `answer` stream each reply (given the history and the turn number),
    keep the history; /reset forgets it, /quit or Ctrl-D leaves."""
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    turn = 0
    while (line := await _read_line("you> ")) is not None:
        message = line.strip()
        if message in ("/quit", "/exit"):
            break
        if message == "/reset":
            del history[1 if system else 0 :]
            print("(conversation forgotten)")
            continue
        if not message:
            continue
        history.append({"role": "user", "content": message})
        print("assistant> ", end="", flush=True)
        try:
            reply = await answer(history, turn)
        except PeerError as error:  # one failed turn (a full context, a cluster re-planning) is not the end
            hint = "; /reset starts afresh" if "context" in str(error) else ""
            print(f"\n(no answer: {error}{hint})")
            history.pop()
            continue
        print()
        history.append({"role": "assistant", "content": reply})
        turn += 1


async def run_chat(args: argparse.Namespace) -> None:
    """The REPL over stage servers started for the session."""
    # The engine loads here: `edgeshard chat --api` never imports torch.
    from ..model.devices import pick_device
    from ..model.files import open_model
    from ..model.shard import even_split, unit_count
    from ..model.text import TextStream, chat_ids, stop_token_ids
    from ..pipeline.local import LocalCluster

    source = open_model(args.model)
    tokenizer = source.tokenizer()
    stop_ids = stop_token_ids(source.config)
    ranges = even_split(unit_count(source.config), args.stages)
    async with LocalCluster(
        args.model, ranges, processes=args.processes, dtype=args.dtype, device=pick_device(args.device), source=source
    ) as cluster:
        print(f"{len(ranges)} stages: {', '.join(f'[{a}, {b})' for a, b in ranges)}. {HELP}", file=sys.stderr)

        async def answer(history: list[dict[str, str]], turn: int) -> str:
            ids = chat_ids(tokenizer, history)
            sampling = SamplingParams(args.temperature, 0, args.top_p, args.seed + turn)
            stream = TextStream(tokenizer)
            async for token in cluster.origin.generate(cluster.route, ids, sampling, args.max_tokens, stop_ids):
                print(stream.add(token), end="", flush=True)
            return stream.text

        await repl(args.system, answer)


async def run_api_chat(args: argparse.Namespace) -> None:
    """The same REPL, each answer streamed from a peer's /v1/chat/completions."""
    print(f"chatting through {args.api}. {HELP}", file=sys.stderr)

    def stream(history: list[dict[str, str]], turn: int) -> str:
        reply = ""
        chunks = stream_chunks(
            args.api, history, args.max_tokens, args.temperature, args.seed + turn, api_key=args.api_key
        )
        for text in texts(chunks):
            reply += text
            print(text, end="", flush=True)
        return reply

    async def answer(history: list[dict[str, str]], turn: int) -> str:
        return await asyncio.to_thread(stream, history, turn)

    await repl(args.system, answer)


def main(args: argparse.Namespace) -> int:
    """Run `edgeshard chat`."""
    asyncio.run(run_api_chat(args) if args.api else run_chat(args))
    return 0
