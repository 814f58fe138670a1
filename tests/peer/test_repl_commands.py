"""`edgeshard chat`'s pure parts: the command parser, the /plan /peers /stats tables and the error
lines, and the loop driven by scripted lines over a fake backend (Ctrl-C included)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edgeshard.peer.api.client import ApiError
from edgeshard.peer.cli.render import (
    ReplyStats,
    describe_error,
    render_local_plan,
    render_peers,
    render_plan,
    render_stats,
)
from edgeshard.peer.cli.repl import Command, Repl, Settings, Show, history_path, parse_command
from edgeshard.peer.errors import PeerError


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", Command("nothing")),
        ("   ", Command("nothing")),
        ("hello there ", Command("say", "hello there")),
        ("//etc/passwd is a path", Command("say", "/etc/passwd is a path")),
        ("/quit", Command("quit")),
        ("/EXIT", Command("quit")),
        ("/reset", Command("reset")),
        ("/plan", Command("plan")),
        ("/peers", Command("peers")),
        ("/stats", Command("stats")),
        ("/help", Command("help")),
        ("/system You are terse.", Command("system", "You are terse.")),
        ("/system", Command("system", "")),
        ("/temperature 0.7", Command("temperature", value=0.7)),
        ("/temperature 2", Command("temperature", value=2.0)),
        ("/temperature 0", Command("temperature", value=0.0)),
        ("/temperature", Command("temperature")),
        ("/max-tokens 400", Command("max-tokens", value=400)),
        ("/max-tokens", Command("max-tokens")),
    ],
)
def test_lines_parse_into_commands(line: str, expected: Command) -> None:
    assert parse_command(line) == expected


@pytest.mark.parametrize("value", ["-0.1", "2.5", "abc", "nan", "inf", "1e9"])
def test_a_bad_temperature_is_refused(value: str) -> None:
    command = parse_command(f"/temperature {value}")
    assert command.kind == "error" and "from 0" in command.text and value in command.text


@pytest.mark.parametrize("value", ["0", "-3", "2.5", "many"])
def test_a_bad_max_tokens_is_refused(value: str) -> None:
    command = parse_command(f"/max-tokens {value}")
    assert command.kind == "error" and "whole number" in command.text and value in command.text


def test_unknown_commands_and_stray_arguments_get_one_helpful_line() -> None:
    unknown = parse_command("/frobnicate now")
    assert unknown.kind == "error" and "/frobnicate" in unknown.text and "/help" in unknown.text
    stray = parse_command("/plan please")
    assert stray == Command("error", "/plan takes no argument")


STATUS: dict[str, Any] = {
    "peer": "aa11",
    "name": "p1",
    "ready": True,
    "reason": None,
    "plan": {
        "plan_id": "pl-1",
        "layout_id": "lay-9",
        "objective": "latency",
        "stages": [
            {"device": "p1", "peer": "aa11", "start": 0, "end": 11, "serving": True},
            {"device": "p2", "peer": "bb22", "start": 11, "end": 32, "serving": False},
        ],
        "latency_ms": 71.25,
        "throughput_tps": 28.5,
    },
    "peers": [
        {
            "id": "aa11",
            "name": "p1",
            "health": "alive",
            "serving": "lay-9",
            "memory_bytes": 256 * 2**20,
            "ms_per_token_alone": 70.5,
            "excluded": None,
            "links": [{"peer": "bb22", "name": "p2", "mbps": 940.0, "rtt_ms": 0.25}],
        },
        {
            "id": "bb22",
            "name": "p2",
            "health": "suspect",
            "serving": None,
            "memory_bytes": 2**30,
            "ms_per_token_alone": 60.0,
            "excluded": "too little memory",
            "links": [],
        },
    ],
}


def test_plan_shows_each_stage_and_the_prediction() -> None:
    text = render_plan(STATUS)
    assert "pl-1" in text and "lay-9" in text and "latency" in text
    stage_lines = [line for line in text.splitlines() if "[0:11)" in line or "[11:32)" in line]
    assert len(stage_lines) == 2
    assert "p1" in stage_lines[0] and "aa11" in stage_lines[0] and "yes" in stage_lines[0]
    assert "p2" in stage_lines[1] and "bb22" in stage_lines[1] and stage_lines[1].rstrip().endswith("no")
    with_predictions = STATUS["plan"]["stages"][0] | {"predicted_compute_ms": 12.5, "predicted_transfer_ms": 0.5}
    status = STATUS | {"plan": STATUS["plan"] | {"stages": [with_predictions]}}
    assert "12.5 compute, 0.5 out" in render_plan(status)
    assert "71.2 ms/token" in text and "28.5 tokens/s" in text
    assert "NOT READY" not in text
    assert "NOT READY: loading" in render_plan(STATUS | {"ready": False, "reason": "loading"})


def test_plan_without_a_plan_says_why() -> None:
    assert render_plan({"plan": None, "reason": "2 peers cannot hold the model"}) == (
        "no plan yet: 2 peers cannot hold the model"
    )


def test_local_plan_lists_the_ranges() -> None:
    text = render_local_plan("default", [(0, 11), (11, 32)], ["http://127.0.0.1:1", "http://127.0.0.1:2"])
    assert "local mode" in text and "[0:11)" in text and "http://127.0.0.1:2" in text


def test_peers_show_health_memory_speed_serving_and_links() -> None:
    text = render_peers(STATUS)
    lines = text.splitlines()
    p1 = next(line for line in lines if line.strip().startswith("p1"))
    assert "alive" in p1 and "0.25 GiB" in p1 and "70.5" in p1 and "lay-9" in p1
    p2 = next(line for line in lines if line.strip().startswith("p2"))
    assert "suspect" in p2 and "1.00 GiB" in p2 and "left out: too little memory" in p2
    assert any("→ p2" in line and "940.0 Mbps" in line and "rtt 0.25 ms" in line for line in lines)


TIMING = {
    "steps": 11,
    "ttft_ms": 180.5,
    "ms_per_token": 75.25,
    "stages": [
        {"hop": 0, "url": "http://a", "device": "p1", "queue_ms": 1.5, "compute_ms": 30.0, "other_ms": 0.5},
        {"hop": 1, "url": "http://b", "device": None, "queue_ms": 0.0, "compute_ms": 40.0, "other_ms": 0.25},
    ],
    "links": [
        {"from": "origin", "to": "p1", "transfer_ms": 0.5, "predicted_ms": None},
        {"from": "p1", "to": "http://b", "transfer_ms": 1.25, "predicted_ms": 1.0},
    ],
    "transfer_ms": 1.75,
    "predicted_ms_per_token": 70.0,
}


def test_stats_show_where_the_time_went() -> None:
    assert "no reply yet" in render_stats(None)
    stats = ReplyStats(tokens=12, ttft_ms=210.0, ms_per_token=76.0, edgeshard={"timing": TIMING}, timing=TIMING)
    text = render_stats(stats)
    assert "12 tokens" in text and "time to first token 210.0 ms" in text and "76.0 ms/token" in text
    assert "11 decode steps" in text and "75.2 ms" in text and "predicted 70.0" in text and "180.5" in text
    assert any(line.split()[:2] == ["0", "p1"] and "30.00" in line for line in text.splitlines())
    assert any(line.split()[:2] == ["1", "http://b"] and "40.00" in line for line in text.splitlines())
    assert "p1 → http://b" in text and "1.25" in text and "all links: 1.75" in text
    named = render_stats(ReplyStats(tokens=12, timing=TIMING, names={"http://b": "p2"}))
    assert any(line.split()[:2] == ["1", "p2"] for line in named.splitlines()) and "p1 → p2" in named


def test_stats_without_timing_say_so() -> None:
    text = render_stats(ReplyStats(tokens=3, ttft_ms=50.0, ms_per_token=None))
    assert "no per-stage timing" in text and "no edgeshard.timing" in text and "3 tokens" in text
    stopped = render_stats(ReplyStats(tokens=3, interrupted=True))
    assert "(interrupted)" in stopped and "stopped before its last chunk" in stopped


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            ApiError("cannot reach http://x: refused", unreachable=True),
            ["Is edgeshard-peer running", "edgeshard status --api http://x"],
        ),
        (ApiError("HTTP 401: No API key", status=401), ["--api-key", "EDGESHARD_API_KEY"]),
        (ApiError("HTTP 429: the cluster is busy", status=429, retry_after_s=2), ["busy", "try again in 2 s"]),
        (ApiError("HTTP 503: the cluster is not ready: 2 peers cannot hold it", status=503), ["cannot hold", "/plan"]),
        (ApiError("HTTP 400: context_length_exceeded: context is 512"), ["/reset starts afresh"]),
        (PeerError("stage gone"), ["stage gone"]),
    ],
)
def test_errors_read_as_one_line_with_what_to_do(error: PeerError, words: list[str]) -> None:
    line = describe_error(error, "http://x")
    assert "\n" not in line and all(word in line for word in words), line


def test_the_history_file_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGESHARD_CHAT_HISTORY", str(tmp_path / "h"))
    assert history_path() == tmp_path / "h"
    monkeypatch.delenv("EDGESHARD_CHAT_HISTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert history_path() == tmp_path / "edgeshard" / "chat_history"


class FakeBackend:
    """Answers "echo: <message>" in two pieces; a message "hang" streams a piece and then waits
    until it is cancelled; "fail" raises an ApiError."""

    def __init__(self) -> None:
        self.seen: list[tuple[list[dict[str, str]], Settings]] = []
        self.cancelled = False
        self.hang_status = False

    async def reply(
        self, messages: list[dict[str, str]], settings: Settings, turn: int, show: Show, stats: ReplyStats
    ) -> str:
        self.seen.append((list(messages), Settings(**vars(settings))))
        message = messages[-1]["content"]
        if message == "fail":
            raise ApiError("HTTP 429: the cluster is busy", status=429, retry_after_s=1)
        show("echo: ")
        if message == "hang":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        show(message)
        stats.tokens = 2
        return f"echo: {message}"

    async def _maybe_hang(self) -> None:
        """A status that does not come (a peer gone quiet) until Ctrl-C, after "<ctrl-c soon> /plan"."""
        if self.hang_status:
            self.hang_status = False
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled = True
                raise

    async def plan(self) -> str:
        await self._maybe_hang()
        return "PLAN"

    async def peers(self) -> str:
        await self._maybe_hang()
        raise ApiError("cannot reach http://x", unreachable=True)

    def describe_error(self, error: PeerError) -> str:
        return describe_error(error, "http://x")


def scripted(lines: list[str]) -> tuple[Repl, FakeBackend]:
    backend = FakeBackend()
    feed: Iterator[str] = iter(lines)

    async def read(prompt: str) -> str | None:
        line = next(feed, None)
        if line == "<ctrl-c soon>":  # Ctrl-C (SIGINT) while the next reply streams
            asyncio.get_running_loop().call_later(0.1, repl._on_sigint)
            return "hang"
        if line is not None and line.startswith("<ctrl-c soon> "):  # ... while the command waits
            asyncio.get_running_loop().call_later(0.1, repl._on_sigint)
            backend.hang_status = True
            return line.removeprefix("<ctrl-c soon> ")
        return line

    repl = Repl(backend, Settings(system="be brief", max_tokens=8), read)
    return repl, backend


def test_the_loop_keeps_the_conversation_and_applies_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    lines = "hi|/max-tokens 5|/temperature 0.5|/temperature 9|again|/system Be a pirate.|ahoy|/plan|/peers|/stats"
    repl, backend = scripted([*lines.split("|"), "fail", "/bogus", "/reset", "last", "/quit", "never read"])
    asyncio.run(repl.run())
    out = capsys.readouterr().out
    messages = [seen[0] for seen in backend.seen]
    assert messages[0] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert messages[1][-2:] == [{"role": "assistant", "content": "echo: hi"}, {"role": "user", "content": "again"}]
    assert backend.seen[0][1].temperature == 0.0 and backend.seen[1][1].temperature == 0.5
    assert backend.seen[0][1].max_tokens == 8 and backend.seen[1][1].max_tokens == 5
    assert messages[2] == [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "ahoy"}]
    assert messages[3][-1] == {"role": "user", "content": "fail"} and len(messages[3]) == 4
    assert messages[4] == [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "last"}]
    assert "assistant> echo: hi\n" in out and "(temperature 0.5)" in out and "temperature: a number from 0" in out
    assert "PLAN" in out and "Is edgeshard-peer running" in out and "2 tokens" in out
    assert "(no answer: HTTP 429: the cluster is busy; try again in 1 s)" in out
    assert "unknown command /bogus" in out and "(conversation forgotten)" in out
    assert len(backend.seen) == 5  # nothing after /quit


def test_ctrl_c_stops_the_reply_and_leaves_the_turn_out(capsys: pytest.CaptureFixture[str]) -> None:
    repl, backend = scripted(["hi", "<ctrl-c soon>", "after", "/stats"])
    asyncio.run(asyncio.wait_for(repl.run(), 10))
    out = capsys.readouterr().out
    assert backend.cancelled, "the backend's stream was not closed"
    assert "assistant> echo: \n(stopped: this turn is left out of the conversation)" in out
    after = backend.seen[2][0]
    assert [m["content"] for m in after] == ["be brief", "hi", "echo: hi", "after"]  # no "hang", no partial
    assert repl.last is not None and not repl.last.interrupted  # /stats describes the last finished reply
    assert math.isclose(repl.settings.temperature, 0.0)


@pytest.mark.parametrize("command", ["/plan", "/peers"])
def test_ctrl_c_stops_a_slow_plan_or_peers(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    repl, backend = scripted([f"<ctrl-c soon> {command}", "hi", command, "/quit"])
    started = time.monotonic()
    asyncio.run(asyncio.wait_for(repl.run(), 10))
    assert time.monotonic() - started < 5, "Ctrl-C did not stop the wait"
    out = capsys.readouterr().out
    assert backend.cancelled, "the command's wait was not cancelled"
    assert out.count("(stopped)") == 1 and "(stopped)\n" in out
    assert out.index("(stopped)") < out.index("assistant> echo: hi")  # and the chat goes on
    assert [m["content"] for m in backend.seen[0][0]] == ["be brief", "hi"]
    assert ("PLAN" if command == "/plan" else "Is edgeshard-peer running") in out  # the next one answers


def test_a_failed_turn_leaves_no_trace_and_the_chat_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    repl, backend = scripted(["fail", "ok", "/quit"])
    asyncio.run(repl.run())
    assert backend.seen[1][0] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ok"}]
    assert "(no answer: HTTP 429" in capsys.readouterr().out
