"""The loop of `edgeshard chat`: read a line, run a command or stream a reply, keep the conversation.

The chat itself is a `Backend` (a peer's API, or stage servers in this process); this module
knows neither. Lines come from prompt_toolkit on a terminal (editing, history kept in a file) and
from plain reads otherwise (`echo hi | edgeshard chat --api ...`). Ctrl-C during a reply stops
that reply (the backend closes its stream, which frees the session on the cluster) and leaves
the turn out of the conversation, and during /plan or /peers it stops the wait for the status;
Ctrl-C at the prompt does not leave, Ctrl-D and /quit do.
Standard library only at import: prompt_toolkit loads when a terminal asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import PeerError
from .render import ReplyStats, render_stats

PROMPT = "you> "
MAX_TEMPERATURE = 2.0
MAX_TOKENS = 1_000_000  # the peer refuses what its context cannot hold
COMMANDS = {
    "/plan": "the stages: device, peer, layers [start:end), predicted ms/token and tokens/s",
    "/peers": "the peers in the view: health, memory, speed, serving, links",
    "/stats": "the last reply: time to first token, ms/token, time per stage and per link",
    "/system TEXT": "set the system prompt (starts the conversation afresh); /system alone shows it",
    "/temperature X": "sampling temperature from 0 (greedy) to 2; /temperature alone shows it",
    "/max-tokens N": "the longest reply, in tokens; /max-tokens alone shows it",
    "/reset": "forget the conversation",
    "/help": "this list",
    "/quit": "leave (or Ctrl-D); Ctrl-C stops a reply",
}
HELP = "commands: " + ", ".join(name.split()[0] for name in COMMANDS) + " (/help explains them)"


@dataclass(frozen=True)
class Command:
    """One line, parsed: `kind` is "say" (text to send), "nothing", "error" (text says why), or a
    command's name without the slash; `value` the number of /temperature or /max-tokens."""

    kind: str
    text: str = ""
    value: float | None = None


def parse_command(line: str) -> Command:
    """What a line asks for. A line that starts with "//" sends the rest with one slash."""
    stripped = line.strip()
    if not stripped:
        return Command("nothing")
    if stripped.startswith("//"):
        return Command("say", stripped[1:])
    if not stripped.startswith("/"):
        return Command("say", stripped)
    name, _, rest = stripped.partition(" ")
    name, rest = name.lower(), rest.strip()
    if name in ("/quit", "/exit", "/q"):
        return Command("quit")
    if name in ("/help", "/?", "/h"):
        return Command("help")
    if name in ("/reset", "/plan", "/peers", "/stats"):
        if rest:
            return Command("error", f"{name} takes no argument")
        return Command(name[1:])
    if name == "/system":
        return Command("system", rest)
    if name in ("/temperature", "/temp"):
        if not rest:
            return Command("temperature")
        try:
            value = float(rest)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= MAX_TEMPERATURE:  # nan fails too
            return Command("error", f"temperature: a number from 0 (greedy) to {MAX_TEMPERATURE:g}, not {rest!r}")
        return Command("temperature", value=value)
    if name in ("/max-tokens", "/max_tokens"):
        if not rest:
            return Command("max-tokens")
        if not rest.isdigit() or not 1 <= int(rest) <= MAX_TOKENS:
            return Command("error", f"max-tokens: a whole number from 1 to {MAX_TOKENS}, not {rest!r}")
        return Command("max-tokens", value=int(rest))
    return Command("error", f"unknown command {name}: /help lists the commands (// sends a line starting with /)")


def help_text() -> str:
    """/help."""
    return "\n".join(f"  {name:<16} {what}" for name, what in COMMANDS.items())


@dataclass
class Settings:
    """What a turn is sampled with (the REPL's commands change them)."""

    system: str | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    top_p: float = 1.0
    seed: int = 0


Show = Callable[[str], None]


class Backend(Protocol):
    """Where replies come from."""

    async def reply(
        self, messages: list[dict[str, str]], settings: Settings, turn: int, show: Show, stats: ReplyStats
    ) -> str:
        """Stream one reply: `show` each piece of text as it arrives, fill `stats` (tokens,
        the `edgeshard` object and its timing); return the whole text. Cancelled, it closes
        its stream at once (the cluster frees the session) and lets CancelledError through."""

    async def plan(self) -> str:
        """/plan's text."""

    async def peers(self) -> str:
        """/peers' text."""

    def describe_error(self, error: PeerError) -> str:
        """A failed turn or command in one line, with what to do about it."""


Reader = Callable[[str], Awaitable[str | None]]  # a line; None at the end; KeyboardInterrupt for Ctrl-C


async def read_plain_line(prompt: str) -> str | None:
    """A line of stdin, read on a daemon thread (a reader abandoned at exit does not hold the
    process); None at the end of input."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()
    print(prompt, end="", flush=True)

    def deliver(line: str) -> None:
        if not done.done():
            done.set_result(line)

    def read() -> None:
        try:
            line = sys.stdin.readline()
        except (OSError, ValueError):
            line = ""
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(deliver, line)

    threading.Thread(target=read, name="chat-stdin", daemon=True).start()
    line = await done
    return line.rstrip("\n") if line else None


def history_path() -> Path:
    """Where the terminal's line history is kept: $EDGESHARD_CHAT_HISTORY, else
    $XDG_STATE_HOME/edgeshard/chat_history (~/.local/state by default)."""
    if given := os.environ.get("EDGESHARD_CHAT_HISTORY"):
        return Path(given).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "edgeshard" / "chat_history"


def terminal_reader() -> Reader:
    """prompt_toolkit's line editor with the history file (in memory when the file cannot be made)."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, History, InMemoryHistory

    path = history_path()
    history: History
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        history = FileHistory(str(path))
    except OSError:
        history = InMemoryHistory()
    session: PromptSession[str] = PromptSession(history=history)

    async def read(prompt: str) -> str | None:
        try:
            # Raw mode: Ctrl-C arrives as a key and raises KeyboardInterrupt here, not as SIGINT.
            return await session.prompt_async(prompt, handle_sigint=False)
        except EOFError:
            return None

    return read


class Repl:
    """The loop: one backend, the conversation, the settings and the last reply's figures."""

    def __init__(self, backend: Backend, settings: Settings, read_line: Reader, interactive: bool = False) -> None:
        self.backend = backend
        self.settings = settings
        self.read_line = read_line
        self.interactive = interactive  # a terminal: Ctrl-C at the prompt stays, elsewhere it leaves
        self.history: list[dict[str, str]] = []
        self.turn = 0
        self.last: ReplyStats | None = None
        self._task: asyncio.Future[object] | None = None  # the reply (or plain read) Ctrl-C stops

    def _reset(self) -> None:
        system = self.settings.system
        self.history = [{"role": "system", "content": system}] if system else []

    def _on_sigint(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _stoppable(self, work: Awaitable[object]) -> asyncio.Future[object]:
        """Run `work` as the task Ctrl-C cancels; the finished (or cancelled) task."""
        task = asyncio.ensure_future(work)
        self._task = task
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._task = None
        return task

    async def run(self) -> None:
        """Until /quit, Ctrl-D or the end of input."""
        self._reset()
        loop = asyncio.get_running_loop()
        handled = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
            handled = True
        try:
            while await self._one_line():
                pass
            if not self.interactive:
                print()  # after the last "you> "
        finally:
            if handled:
                loop.remove_signal_handler(signal.SIGINT)

    async def _read(self) -> str | None:
        if self.interactive:
            while True:
                try:
                    return await self.read_line(PROMPT)
                except KeyboardInterrupt:
                    print("(Ctrl-D or /quit leaves)")
        task = await self._stoppable(self.read_line(PROMPT))
        if task.cancelled():  # Ctrl-C while waiting for piped input: leave
            print()
            return None
        line = task.result()
        return line if isinstance(line, str) else None

    async def _one_line(self) -> bool:
        """Read and act on one line; False to leave."""
        line = await self._read()
        if line is None:
            return False
        command = parse_command(line)
        settings = self.settings
        if command.kind == "quit":
            return False
        if command.kind == "say":
            await self._turn(command.text)
        elif command.kind == "error":
            print(f"({command.text})")
        elif command.kind == "help":
            print(help_text())
        elif command.kind == "reset":
            self._reset()
            print("(conversation forgotten)")
        elif command.kind == "system":
            if not command.text:
                print(f"(system prompt: {settings.system!r}; /system TEXT sets it)")
            else:
                settings.system = command.text
                self._reset()
                print("(system prompt set; conversation forgotten)")
        elif command.kind == "temperature":
            if command.value is None:
                print(f"(temperature {settings.temperature:g})")
            else:
                settings.temperature = command.value
                print(f"(temperature {settings.temperature:g})")
        elif command.kind == "max-tokens":
            if command.value is not None:
                settings.max_tokens = int(command.value)
            print(f"(max-tokens {settings.max_tokens})")
        elif command.kind == "stats":
            print(render_stats(self.last))
        elif command.kind in ("plan", "peers"):
            await self._show(self.backend.plan() if command.kind == "plan" else self.backend.peers())
        return True

    async def _show(self, text: Awaitable[str]) -> None:
        """Print what /plan or /peers fetches; Ctrl-C stops the wait (up to the status timeout)."""
        task = await self._stoppable(text)
        if task.cancelled():
            print("(stopped)")
            return
        error = task.exception()
        if error is None:
            print(task.result())
        elif isinstance(error, PeerError):
            print(f"({self.backend.describe_error(error)})")
        else:
            raise error

    async def _turn(self, message: str) -> None:
        """Stream one reply; a failed or stopped turn leaves no trace in the conversation."""
        self.history.append({"role": "user", "content": message})
        print("assistant> ", end="", flush=True)
        stats = ReplyStats()
        started = time.monotonic()
        first: list[float] = []

        def show(text: str) -> None:
            if not first:
                first.append(time.monotonic())
            print(text, end="", flush=True)

        task = await self._stoppable(self.backend.reply(list(self.history), self.settings, self.turn, show, stats))
        ended = time.monotonic()
        if first:
            stats.ttft_ms = (first[0] - started) * 1000
            if stats.tokens and stats.tokens > 1:
                stats.ms_per_token = (ended - first[0]) * 1000 / (stats.tokens - 1)
        if task.cancelled():
            stats.interrupted = True
            self.last = stats
            self.history.pop()
            print("\n(stopped: this turn is left out of the conversation)")
            return
        error = task.exception()
        if error is not None:
            self.history.pop()
            if not isinstance(error, PeerError):
                raise error
            # One failed turn (a full context, a cluster re-planning) is not the end.
            print(f"\n(no answer: {self.backend.describe_error(error)})")
            return
        reply = task.result()
        print()
        self.last = stats
        self.history.append({"role": "assistant", "content": str(reply)})
        self.turn += 1
