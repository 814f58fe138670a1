"""`edgeshard chat --api` in a real pseudo-terminal (pexpect), against the session's 3-peer cluster:
streamed replies, /plan, /peers, /stats, Ctrl-C in the middle of a reply (the cluster frees the
session, the REPL goes on), Ctrl-C at the prompt, the line history, refused settings, /quit; and
the message when no peer answers."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from ..peers import Peer, free_port, wait_until

pytestmark = pytest.mark.slow

# A fresh prompt: prompt_toolkit turns bracketed paste on, then draws "you>" (the space is a cursor
# move); the accepted line's redraw does not start with the former.
PROMPT = re.compile(r"\x1b\[\?2004h[^\n]*?you>")
UP = "\x1b[A"


def spawn(api: str, history: Path, *extra: str) -> pexpect.spawn:
    env = {
        **os.environ,
        "EDGESHARD_CHAT_HISTORY": str(history),
        "TERM": "xterm",
        "PROMPT_TOOLKIT_NO_CPR": "1",  # no cursor-position queries for the test to answer
        "NO_COLOR": "1",
    }
    command = ["-m", "edgeshard.peer.cli", "chat", "--api", api, *extra]
    return pexpect.spawn(sys.executable, command, env=env, encoding="utf-8", timeout=120, dimensions=(50, 220))


def ready_peer(peers: list[Peer]) -> Peer:
    return wait_until(
        lambda: next((p for p in peers if (s := p.status()) is not None and s["ready"]), None), 120, "a ready peer"
    )


def idle(peers: list[Peer], api_peer: Peer) -> bool | None:
    """True when no stage holds a session and the API generates nothing."""
    statuses = [p.status() for p in peers]
    if any(s is None for s in statuses):
        return None
    own = api_peer.status()
    quiet = all(s is not None and s["shard"]["sessions"] == 0 for s in statuses)
    return True if quiet and own is not None and own["api"]["generating"] == 0 else None


def answer_after(child: pexpect.spawn) -> str:
    """The streamed text between "assistant> " and the next prompt."""
    child.expect_exact("assistant> ")
    child.expect(PROMPT)
    return str(child.before)


@pytest.fixture
def repl(surface_cluster: list[Peer], tmp_path: Path) -> Iterator[tuple[pexpect.spawn, Peer, Path]]:
    peer = ready_peer(surface_cluster)
    history = tmp_path / "chat_history"
    child = spawn(peer.api, history, "--max-tokens", "8")
    try:
        child.expect(PROMPT)
        yield child, peer, history
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_the_repl_streams_and_shows_the_cluster(
    repl: tuple[pexpect.spawn, Peer, Path], surface_cluster: list[Peer]
) -> None:
    child, peer, history = repl
    child.sendline("Name a colour.")
    assert re.search(r"\w", answer_after(child))

    status = peer.status()
    assert status is not None
    child.sendline("/plan")
    child.expect_exact("predicted:")
    table = str(child.before)
    for stage in status["plan"]["stages"]:
        assert re.search(rf"\b{stage['device']}\b.*\b{stage['peer']}\b.*\[{stage['start']}:{stage['end']}\)", table)
    child.expect(PROMPT)

    child.sendline("/peers")
    child.expect(PROMPT)
    view = str(child.before)
    for p in surface_cluster:
        assert re.search(rf"^\s+{p.name}\s+alive\s", view, re.MULTILINE), view

    child.sendline("/stats")
    child.expect(r"time to first token (\d+\.\d) ms")
    assert float(child.match.group(1)) > 0
    child.expect(r"prompt: (\d+) tokens, (\d+) of them reused from the prefix cache")
    assert int(child.match.group(1)) > int(child.match.group(2)) >= 0
    child.expect(PROMPT)

    child.sendline("/temperature 7")
    child.expect_exact("temperature: a number from 0 (greedy) to 2, not '7'")
    child.expect(PROMPT)
    child.send(UP)  # the line history recalls the last line; Enter runs it again
    child.send("\r")
    child.expect_exact("not '7'")
    child.expect(PROMPT)

    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.wait()
    assert child.exitstatus == 0
    assert "/temperature 7" in history.read_text()  # kept in the file named by $EDGESHARD_CHAT_HISTORY


def test_ctrl_c_stops_a_reply_and_the_cluster_frees_its_session(
    repl: tuple[pexpect.spawn, Peer, Path], surface_cluster: list[Peer]
) -> None:
    child, peer, _ = repl
    child.send("\x03")  # at the prompt: stays
    child.expect_exact("(Ctrl-D or /quit leaves)")
    child.sendline("/max-tokens 400")
    child.expect_exact("(max-tokens 400)")
    child.expect(PROMPT)

    child.sendline("Tell me a long story about a dragon who learns to bake bread.")
    child.expect_exact("assistant> ")
    child.expect(r"\w+\W+\w+\W+\w+")  # words arrive while the reply runs: streamed
    status = peer.status()
    assert status is not None and status["api"]["generating"] == 1, "the reply was over before Ctrl-C"
    child.sendintr()
    child.expect_exact("(stopped: this turn is left out of the conversation)")
    child.expect(PROMPT)
    wait_until(lambda: idle(surface_cluster, peer), 20, "the cluster to free the session", surface_cluster)

    child.sendline("/max-tokens 8")
    child.expect(PROMPT)
    child.sendline("Say yes.")
    assert re.search(r"\w", answer_after(child))
    child.sendline("/stats")
    child.expect(r"last reply: (\d+) tokens")  # the finished reply, not the stopped one
    assert 1 <= int(child.match.group(1)) <= 8
    child.expect(PROMPT)

    child.sendeof()  # Ctrl-D leaves too
    child.expect(pexpect.EOF)
    child.wait()
    assert child.exitstatus == 0


def test_no_peer_at_the_url_reads_as_a_hint_not_a_traceback(tmp_path: Path) -> None:
    child = spawn(f"http://127.0.0.1:{free_port()}", tmp_path / "history")
    child.expect(pexpect.EOF)
    child.wait()
    output = str(child.before)
    assert "cannot reach" in output and "Is edgeshard-peer running there? Try `edgeshard status --api" in output
    assert "Traceback" not in output and child.exitstatus == 2
