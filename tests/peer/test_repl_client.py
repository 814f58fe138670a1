"""The REPL's HTTP side (`api/client.ChatStream`) against a small standard-library SSE server: the
final chunk's `edgeshard` object is kept, close() from another thread ends a waiting read at
once and the server sees the client leave, error answers keep their status; and `edgeshard chat
--api` stays light (no torch, transformers or aiohttp)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from edgeshard.peer.api.client import ApiError, chat_stream, get_json, get_status, stream_chunks, texts

FINAL = {"layout_id": "lay", "queued_s": 0.0, "token_ids": [1, 2], "failovers": [], "timing": {"steps": 1}}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    left = threading.Event()  # a slow stream's client went away


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args: Any) -> None:
        pass

    def _chunk(self, chunk: dict[str, Any]) -> None:
        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.flush()

    def do_GET(self) -> None:
        payload = json.dumps({"peer": "a", "auth": self.headers.get("Authorization")}).encode()
        if self.path == "/text":
            payload = b"<html>not json</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        message = body["messages"][-1]["content"]
        if message == "busy":
            payload = json.dumps({"error": {"message": "the cluster is busy", "code": "queue_full"}}).encode()
            self.send_response(429)
            self.send_header("Retry-After", "3")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        delta = {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}
        if message == "slow":
            try:
                for _ in range(400):
                    self._chunk(delta)
                    time.sleep(0.05)
            except OSError:
                self.server.left.set()
            return
        self._chunk(delta)
        if message == "broken":
            self._chunk({"error": {"message": "generation failed: stage gone", "type": "server_error"}})
            return
        final = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}], "usage": {"completion_tokens": 2}}
        self._chunk(final | {"edgeshard": FINAL})
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def api() -> Iterator[tuple[str, Server]]:
    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()


def test_the_final_chunk_keeps_usage_and_the_edgeshard_object(api: tuple[str, Server]) -> None:
    url, _ = api
    stream = chat_stream(url, [{"role": "user", "content": "ok"}], 2).open()
    assert "".join(texts(stream)) == "a"
    assert stream.finish_reason == "length" and stream.usage == {"completion_tokens": 2}
    assert stream.edgeshard == FINAL
    assert list(texts(stream_chunks(url, [{"role": "user", "content": "ok"}]))) == ["a"]


def test_close_from_another_thread_ends_the_stream_and_the_server_sees_it(api: tuple[str, Server]) -> None:
    url, server = api
    stream = chat_stream(url, [{"role": "user", "content": "slow"}], 400).open()
    got: list[str] = []
    ended = threading.Event()

    def read() -> None:
        for text in texts(stream):
            got.append(text)
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 10
    while len(got) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stream.close()
    assert ended.wait(2), "the read waiting for the next chunk did not end"
    assert 3 <= len(got) < 100 and stream.closed and stream.edgeshard is None
    assert server.left.wait(5), "the server never saw the client leave"


def test_error_answers_keep_their_status(api: tuple[str, Server]) -> None:
    url, _ = api
    with pytest.raises(ApiError) as busy:
        chat_stream(url, [{"role": "user", "content": "busy"}]).open()
    assert busy.value.status == 429 and busy.value.code == "queue_full" and busy.value.retry_after_s == 3
    assert str(busy.value) == "HTTP 429: the cluster is busy"
    with pytest.raises(ApiError, match="generation failed: stage gone"):
        list(stream_chunks(url, [{"role": "user", "content": "broken"}]))


def test_a_closed_port_is_unreachable() -> None:
    with pytest.raises(ApiError) as error:
        chat_stream("http://127.0.0.1:9", [{"role": "user", "content": "hi"}]).open()
    assert error.value.unreachable and error.value.status is None and "cannot reach" in str(error.value)


def test_get_json_gives_the_body_and_the_headers(api: tuple[str, Server]) -> None:
    url, _ = api
    body, headers = get_json(url, "/v1/status", 5, "sk-1")
    assert body == {"peer": "a", "auth": "Bearer sk-1"} and headers.get("Date")
    assert get_status(url)["auth"] is None  # no key, no header
    with pytest.raises(ApiError, match="did not answer JSON"):
        get_json(url, "/text")


@pytest.mark.parametrize("where", ["not http", "http://127.0.0.1:None", "127.0.0.1:7421", "http://127.0.0.1:9"])
def test_get_status_turns_every_failure_into_an_api_error(where: str, not_http: str) -> None:
    url = not_http if where == "not http" else where
    with pytest.raises(ApiError) as error:
        get_status(url, timeout_s=5)
    assert error.value.status is None and url in str(error.value)


PROBE = """
import json, sys
from edgeshard.peer.cli.main import main
code = main(sys.argv[1:])
print(json.dumps([code, sorted(m for m in ("torch", "transformers", "aiohttp", "numpy") if m in sys.modules)]))
"""


def test_chat_through_an_api_never_imports_the_engine() -> None:
    run = subprocess.run(
        [sys.executable, "-c", PROBE, "chat", "--api", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    code, loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded == [] and code == 2
    assert "Is edgeshard-peer running there? Try `edgeshard status --api http://127.0.0.1:9`" in run.stderr
    assert "Traceback" not in run.stderr
