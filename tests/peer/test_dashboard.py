"""The dashboard without a cluster: its pure parts (snapshot, fingerprint, pacing, the bounded
queue, the cookie), and its routes on a real aiohttp server over a backend that only has a
status: the page, the snapshot, the server-sent events (first snapshot, replies as they end,
snapshots coalesced, a clean end at shutdown) and the API key's cookie."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from edgeshard.peer.api.dashboard import (
    COOKIE,
    Outbox,
    Pacer,
    cookie_token,
    dashboard_admits,
    fingerprint,
    page_html,
    snapshot,
    sse,
)
from edgeshard.peer.api.events import Event
from edgeshard.peer.api.handlers import Api
from edgeshard.peer.api.telemetry import ReplyRecord
from edgeshard.peer.pipeline.servers import start_server

KEY = "s3cret-key"


def reply(index: int, timing: dict[str, Any] | None = None) -> ReplyRecord:
    return ReplyRecord(f"chatcmpl-{index}", "chat", "completed", 1.0e9, 0.5, 0.0, 7, 16, "L1", [], timing)


def status_document(tokens: int = 0) -> dict[str, Any]:
    return {
        "peer": "a1",
        "name": "alpha",
        "uptime_s": 12.5,
        "ready": True,
        "plan": {"layout_id": "L1", "stages": [{"device": "alpha", "peer": "a1", "start": 0, "end": 32}]},
        "shard": {"sessions": 0, "rss_bytes": 1000},
        "peers": [{"id": "a1", "name": "alpha", "health": "alive", "links": []}],
        "api": {"generating": 0, "queued": 0, "tokens": tokens},
    }


def test_a_snapshot_holds_the_status_and_the_recent_replies_and_events() -> None:
    replies = [reply(i) for i in range(15)]
    events = [Event(i, 1.0e9, "join", f"peer {i} joined") for i in range(1, 61)]
    document = snapshot(status_document(), replies, events, {"completed": 15}, {"join": 60}, 5.0)
    assert document["status"]["name"] == "alpha" and document["time"] == 5.0
    assert [r["id"] for r in document["replies"]] == [f"chatcmpl-{i}" for i in range(5, 15)]
    assert "steps" not in document["replies"][0]
    assert [e["seq"] for e in document["events"]] == list(range(11, 61))
    assert document["outcomes"] == {"completed": 15} and document["event_counts"] == {"join": 60}
    json.dumps(document)  # all of it crosses the wire


def test_the_fingerprint_ignores_the_clock_the_uptime_and_the_memory_held_only() -> None:
    def doc(**changes: Any) -> dict[str, Any]:
        status = status_document() | changes
        return snapshot(status, [], [], {}, {}, time.time())

    base = fingerprint(doc())
    assert fingerprint(doc(uptime_s=99.0)) == base
    assert fingerprint(doc(shard={"sessions": 0, "rss_bytes": 5})) == base
    assert fingerprint(doc(shard={"sessions": 1, "rss_bytes": 1000})) != base
    assert fingerprint(doc(api={"generating": 0, "queued": 0, "tokens": 3})) != base
    with_reply = snapshot(status_document(), [reply(1)], [], {}, {}, 0.0)
    assert fingerprint(with_reply) != base


def test_the_pacer_sends_on_change_at_most_once_a_tick_and_every_period_regardless() -> None:
    pacer = Pacer(tick_s=1.0, period_s=5.0, heartbeat_s=15.0, beat_at=0.0)
    assert pacer.may_look(0.0) and pacer.wants(0.0, "a")
    pacer.sent(0.0, "a")
    assert not pacer.may_look(0.5)  # a change now waits for the tick
    assert pacer.wait_s(0.5) == pytest.approx(0.5)
    assert pacer.may_look(1.0) and not pacer.wants(1.0, "a")  # nothing changed
    assert not pacer.may_look(1.5) and pacer.may_look(2.0)
    assert pacer.wants(2.0, "b")  # changed
    pacer.sent(2.0, "b")
    for now in (3.0, 4.0, 5.0, 6.0):
        assert pacer.may_look(now) and not pacer.wants(now, "b")
    assert pacer.wants(7.0, "b")  # the period passed
    pacer.sent(7.0, "b")
    pacer.owed = True
    assert not pacer.may_look(7.5) and pacer.may_look(8.0) and pacer.wants(8.0, "b")
    assert not pacer.beat(14.9) and pacer.beat(15.0) and not pacer.beat(20.0) and pacer.beat(30.0)


async def test_a_clients_queue_is_bounded_and_an_overflow_owes_a_snapshot() -> None:
    outbox = Outbox(bound=3)
    for index in range(2):
        outbox.put("event", {"seq": index})
    assert [data["seq"] for _, data in outbox.take()[0]] == [0, 1]
    assert outbox.take() == ([], False)
    for index in range(5):
        outbox.put("event", {"seq": index})
    assert len(outbox.items) == 3 and outbox.overflowed
    assert outbox.take() == ([], True)  # dropped: the snapshot holds them
    assert not outbox.overflowed
    started = time.monotonic()
    await outbox.wait(0.05)
    assert time.monotonic() - started >= 0.04
    outbox.put("reply", {})
    await asyncio.wait_for(outbox.wait(5), 1)  # wakes at once
    outbox.take()
    outbox.close()
    await asyncio.wait_for(outbox.wait(5), 1)
    assert outbox.closing


def test_an_event_is_one_data_line() -> None:
    assert sse("event", {"text": "a\nb"}) == b'event: event\ndata: {"text":"a\\nb"}\n\n'


def test_the_cookie_admits_only_the_dashboards_data_on_get() -> None:
    key = KEY.encode()
    cookie = {"Cookie": f"{COOKIE}={cookie_token(key)}"}
    assert cookie_token(key) != cookie_token(b"other") and KEY not in cookie_token(key)
    assert dashboard_admits(make_mocked_request("GET", "/"), key)  # the page: no data
    assert dashboard_admits(make_mocked_request("GET", "/v1/dashboard", headers=cookie), key)
    assert dashboard_admits(make_mocked_request("GET", "/v1/dashboard/events", headers=cookie), key)
    assert not dashboard_admits(make_mocked_request("GET", "/v1/dashboard"), key)
    assert not dashboard_admits(make_mocked_request("GET", "/v1/dashboard", headers={"Cookie": f"{COOKIE}=x"}), key)
    assert not dashboard_admits(make_mocked_request("POST", "/v1/dashboard", headers=cookie), key)
    for path in ("/v1/status", "/v1/models", "/v1/chat/completions", "/metrics", "/v1/dashboardx"):
        assert not dashboard_admits(make_mocked_request("GET", path, headers=cookie), key)


def test_the_page_fetches_nothing_from_anywhere_else() -> None:
    html = page_html()
    assert "EventSource(" in html and 'id="plan-bar"' in html
    assert not re.search(r"<(img|iframe|object|embed)\b|\bsrc=|@import|url\(", html, re.I)
    assert re.findall(r"<link\b[^>]*>", html) == ['<link rel="icon" href="data:,">']  # no icon to ask for
    addresses = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert addresses <= {"http://www.w3.org/2000/svg"}  # a namespace name, never fetched
    assert "innerHTML" not in html  # data goes in as text, never as markup


@dataclass
class StatusBackend:
    """A backend that has a status (the dashboard's routes need no more)."""

    tokens: int = 0
    model_name: str = "test-model"
    context: int = 256
    calls: list[float] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        self.calls.append(time.monotonic())
        return status_document(self.tokens)


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Api, StatusBackend, str, list[Any]]]:
    backend = StatusBackend()
    api = Api(backend, api_key=getattr(request, "param", ""))  # type: ignore[arg-type]
    runner, url = await start_server(api.add_routes, cancel_on_disconnect=True)
    holder = [runner]
    yield api, backend, url, holder
    if holder:
        await runner.cleanup()


async def next_event(response: aiohttp.ClientResponse, timeout_s: float = 10) -> tuple[str, dict[str, Any]]:
    """The next named event of a stream (comments and the retry field skipped)."""
    while True:
        block = (await asyncio.wait_for(response.content.readuntil(b"\n\n"), timeout_s)).decode()
        fields = dict(line.split(": ", 1) for line in block.strip().split("\n") if not line.startswith(":"))
        if "event" in fields:
            return fields["event"], json.loads(fields["data"])


async def test_the_page_and_the_snapshot_are_served(served: tuple[Api, StatusBackend, str, list[Any]]) -> None:
    api, _backend, url, _runner = served
    api.telemetry.finish(reply(1))
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/") as page:
            assert page.status == 200 and page.content_type == "text/html"
            assert "default-src 'none'" in page.headers["Content-Security-Policy"]
            assert "<title>EdgeShard</title>" in await page.text()
        async with session.get(url + "/v1/dashboard") as response:
            document = await response.json()
    assert document["status"]["name"] == "alpha" and document["replies"][0]["id"] == "chatcmpl-1"


async def test_the_stream_sends_a_snapshot_replies_coalesced_snapshots_and_ends_at_shutdown(
    served: tuple[Api, StatusBackend, str, list[Any]],
) -> None:
    api, backend, url, holder = served
    async with aiohttp.ClientSession() as session, session.get(url + "/v1/dashboard/events") as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        kind, first = await next_event(response)
        assert kind == "snapshot" and first["status"]["api"]["tokens"] == 0 and first["replies"] == []
        backend.tokens = 320
        for index in range(20):  # replies for a second: each sent at once, snapshots at most once a second
            api.telemetry.finish(reply(index, {"ms_per_token": 9.0, "stages": [], "links": []}))
            await asyncio.sleep(0.05)
        seen: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + 2.5
        with contextlib.suppress(TimeoutError):
            while (left := deadline - time.monotonic()) > 0:
                seen.append(await next_event(response, left))
        replies = [data["id"] for kind, data in seen if kind == "reply"]
        snapshots = [data for kind, data in seen if kind == "snapshot"]
        assert replies == [f"chatcmpl-{i}" for i in range(20)]
        assert 1 <= len(snapshots) <= 3, [kind for kind, _ in seen]  # at most one a second
        assert snapshots[0]["status"]["api"]["tokens"] == 320 and len(snapshots[0]["replies"]) == 10
        runner = holder.pop()
        stopping = time.monotonic()
        cleanup = asyncio.create_task(runner.cleanup())
        kind = ""
        while kind != "closing":
            kind, _ = await next_event(response, 5)
        assert await asyncio.wait_for(response.content.read(), 5) == b""  # a clean end
        await cleanup
        assert time.monotonic() - stopping < 1.5  # not the server's shutdown timeout


@pytest.mark.parametrize("served", [KEY], indirect=True)
async def test_with_an_api_key_the_page_asks_for_it_and_its_cookie_reads_the_dashboard_only(
    served: tuple[Api, StatusBackend, str, list[Any]],
) -> None:
    api, _backend, url, _runner = served
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/v1/dashboard") as response:
            assert response.status == 401
        async with session.get(url + "/") as page:
            assert page.status == 200  # the page holds no data; it asks for the key
        async with session.get(url + "/?key=wrong", allow_redirects=False) as wrong:
            assert wrong.status == 401 and "Set-Cookie" not in wrong.headers
        async with session.get(url + f"/?key={KEY}", allow_redirects=False) as right:
            assert right.status == 303 and right.headers["Location"] == "/"
            set_cookie = right.headers["Set-Cookie"]
        assert re.search(r"HttpOnly", set_cookie, re.I) and re.search(r"SameSite=Strict", set_cookie, re.I)
        assert "Path=/v1/dashboard" in set_cookie and KEY not in set_cookie
        cookie = {"Cookie": set_cookie.split(";")[0]}
        async with session.get(url + "/v1/dashboard", headers=cookie) as response:
            assert response.status == 200 and (await response.json())["status"]["name"] == "alpha"
        async with session.get(url + "/v1/dashboard/events", headers=cookie) as response:
            assert response.status == 200 and (await next_event(response))[0] == "snapshot"
        for method, path in (("GET", "/v1/status"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
            async with session.request(method, url + path, headers=cookie, json={}) as response:
                assert response.status == 401, path
        async with session.get(url + "/v1/status", headers={"Authorization": f"Bearer {KEY}"}) as response:
            assert response.status == 200
    assert api.telemetry.outcomes["unauthorized"] >= 5


async def test_a_client_that_leaves_stops_listening(served: tuple[Api, StatusBackend, str, list[Any]]) -> None:
    api, _backend, url, _runner = served
    before = (len(api.telemetry._listeners), len(api.events._listeners))
    async with aiohttp.ClientSession() as session, session.get(url + "/v1/dashboard/events") as response:
        assert (await next_event(response))[0] == "snapshot"
        assert (len(api.telemetry._listeners), len(api.events._listeners)) == (before[0] + 1, before[1] + 1)
    deadline = time.monotonic() + 5
    while (len(api.telemetry._listeners), len(api.events._listeners)) != before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (len(api.telemetry._listeners), len(api.events._listeners)) == before  # the handler was cancelled
