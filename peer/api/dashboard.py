"""The dashboard: `GET /` serves one page (`static/dashboard.html`: its style and script inline,
nothing fetched from anywhere else) that shows the cluster as this API sees it, kept live over
server-sent events.

- `GET /v1/dashboard`: one snapshot: the status document, the recent replies with their timing,
  the recent events, the outcome and event counts.
- `GET /v1/dashboard/events`: a `snapshot` at once; another at most once a TICK_S when anything
  in it changed, and every PERIOD_S regardless; each `reply` and `event` as it happens; a comment
  every HEARTBEAT_S. Each client has a bounded queue: a client that falls behind loses what was
  queued and is sent a fresh snapshot (which holds it) instead. The streams end when the app
  shuts down.

With an API key a browser cannot send `Authorization` on a page load or an EventSource. The page
holds no data and is served to anyone; `/?key=KEY` (checked in constant time) sets a cookie
(HttpOnly, SameSite=Strict, path /v1/dashboard) holding an HMAC of the key, and the guard admits
that cookie on GET of the two data routes only: it reads the dashboard, never completions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from .events import ClusterEvents, Event
from .telemetry import ReplyRecord, Telemetry

log = logging.getLogger(__name__)

PAGE_PATH = "/"
SNAPSHOT_PATH = "/v1/dashboard"
STREAM_PATH = "/v1/dashboard/events"
COOKIE = "edgeshard_dashboard"
COOKIE_MAX_AGE_S = 7 * 24 * 3600
SHOW_REPLIES = 10
SHOW_EVENTS = 50
TICK_S = 1.0  # at most one snapshot a second
PERIOD_S = 5.0  # and one at least this often
HEARTBEAT_S = 15.0
QUEUE_BOUND = 64
SHARED_S = 0.5  # clients share a snapshot this young
RETRY_MS = 2000  # how soon a browser reconnects
# The page may run its own inline style and script, and talk to this origin only.
POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; "
    "img-src data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class _Status(Protocol):
    def status(self) -> dict[str, Any]: ...


class Surface(Protocol):
    """What the dashboard reads of the API (`handlers.Api` is one)."""

    @property
    def backend(self) -> _Status: ...

    @property
    def telemetry(self) -> Telemetry: ...

    @property
    def events(self) -> ClusterEvents: ...

    @property
    def api_key(self) -> str: ...


def cookie_token(key: bytes) -> str:
    """The cookie's value for an API key: an HMAC, so the cookie does not hold the key itself and
    a new key voids every cookie."""
    return hmac.new(key, b"edgeshard dashboard cookie 1", hashlib.sha256).hexdigest()


def _same(given: str, expected: bytes) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected)  # constant time


def dashboard_admits(request: web.BaseRequest, key: bytes) -> bool:
    """Whether the guard lets a request without `Authorization` through: the page (no data; its
    handler checks `?key`), and GET of the data routes with the dashboard cookie."""
    if request.method not in ("GET", "HEAD"):
        return False
    if request.path == PAGE_PATH:
        return True
    if request.path in (SNAPSHOT_PATH, STREAM_PATH):
        return _same(request.cookies.get(COOKIE, ""), cookie_token(key).encode())
    return False


def snapshot(
    status: dict[str, Any],
    replies: Iterable[ReplyRecord],
    events: Iterable[Event],
    outcomes: Mapping[str, int],
    event_counts: Mapping[str, int],
    now: float,
) -> dict[str, Any]:
    """The dashboard's document (pure): the status and the recent replies and events, oldest first."""
    return {
        "time": now,
        "status": status,
        "replies": [r.to_json() for r in list(replies)[-SHOW_REPLIES:]],
        "events": [e.to_json() for e in list(events)[-SHOW_EVENTS:]],
        "outcomes": dict(outcomes),
        "event_counts": dict(event_counts),
    }


def fingerprint(document: dict[str, Any]) -> str:
    """What a snapshot says, less what moves all the time (the clock, the uptime, the memory the
    process holds): two snapshots with one fingerprint show the same page."""
    status = {k: v for k, v in document["status"].items() if k != "uptime_s"}
    if isinstance(status.get("shard"), dict):
        status["shard"] = {k: v for k, v in status["shard"].items() if k != "rss_bytes"}
    rest = {k: v for k, v in document.items() if k not in ("time", "status")}
    return json.dumps([status, rest], sort_keys=True, default=str)


@dataclass
class Pacer:
    """When a client is sent a snapshot (pure): at most once a `tick_s`, when its fingerprint
    changed or `period_s` passed or it is owed one; a heartbeat every `heartbeat_s`."""

    tick_s: float = TICK_S
    period_s: float = PERIOD_S
    heartbeat_s: float = HEARTBEAT_S
    sent_at: float = float("-inf")
    looked_at: float = float("-inf")
    beat_at: float = 0.0
    last: str = ""
    owed: bool = False

    def may_look(self, now: float) -> bool:
        """Whether a snapshot may be built now (one look per tick)."""
        return now - self.looked_at >= self.tick_s and now - self.sent_at >= self.tick_s

    def wants(self, now: float, print_: str) -> bool:
        """Having looked at a snapshot with fingerprint `print_`: send it?"""
        self.looked_at = now
        return self.owed or print_ != self.last or now - self.sent_at >= self.period_s

    def sent(self, now: float, print_: str) -> None:
        self.sent_at, self.last, self.owed = now, print_, False

    def beat(self, now: float) -> bool:
        """Whether a heartbeat is due (and count it sent)."""
        if now - self.beat_at < self.heartbeat_s:
            return False
        self.beat_at = now
        return True

    def wait_s(self, now: float) -> float:
        """How long to sleep when nothing arrives."""
        look = max(self.looked_at, self.sent_at) + self.tick_s
        return max(0.0, min(look, self.beat_at + self.heartbeat_s) - now)


class Outbox:
    """One client's bounded queue of (kind, data). When full, further items are dropped and the
    client is owed a snapshot (`overflowed`)."""

    def __init__(self, bound: int = QUEUE_BOUND) -> None:
        self.bound = bound
        self.items: deque[tuple[str, dict[str, Any]]] = deque()
        self.overflowed = False
        self.closing = False
        self._ready = asyncio.Event()

    def put(self, kind: str, data: dict[str, Any]) -> None:
        if len(self.items) >= self.bound:
            self.overflowed = True
        else:
            self.items.append((kind, data))
        self._ready.set()

    def take(self) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
        """What is queued, oldest first, and whether the client is owed a snapshot (after an
        overflow nothing queued goes out: the snapshot holds it). Empties the queue and clears
        the debt together, so an overflow while the items are written is not lost."""
        overflowed, self.overflowed = self.overflowed, False
        items = [] if overflowed else list(self.items)
        self.items.clear()
        self._ready.clear()
        return items, overflowed

    def close(self) -> None:
        self.closing = True
        self._ready.set()

    async def wait(self, timeout_s: float) -> None:
        """Until something is queued, the stream closes, or `timeout_s` passes."""
        if self._ready.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):  # not wait_for: on 3.11 it can swallow a cancel
                await self._ready.wait()


def sse(kind: str, data: dict[str, Any]) -> bytes:
    """One server-sent event (JSON is one line: no newline can end the field early)."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


def page_html() -> str:
    """The page, from the package's data."""
    return (resources.files(__package__) / "static" / "dashboard.html").read_text(encoding="utf-8")


class Dashboard:
    """The dashboard's handlers for one API."""

    def __init__(self, api: Surface, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.clock = clock
        self.html = page_html()
        self.outboxes: set[Outbox] = set()
        self._shared: tuple[float, tuple[int, int], dict[str, Any]] | None = None

    def document(self) -> dict[str, Any]:
        """The snapshot now (shared by clients for SHARED_S unless a reply or event came)."""
        api, now = self.api, self.clock()
        telemetry, events = api.telemetry, api.events
        marks = (id(telemetry.last()), events.events[-1].seq if events.events else 0)
        if self._shared is not None and now - self._shared[0] < SHARED_S and self._shared[1] == marks:
            return self._shared[2]
        try:
            status = api.backend.status()
        except Exception as error:  # shown on the page; the dashboard keeps going
            log.exception("dashboard: status failed")
            status = {"ready": False, "reason": f"status failed: {error}"}
        document = snapshot(status, telemetry.replies, events.events, telemetry.outcomes, events.counts, time.time())
        self._shared = (now, marks, document)
        return document

    async def page(self, request: web.Request) -> web.StreamResponse:
        """GET /: the page; `?key=KEY` sets the cookie and sends the browser back to /."""
        given, key = request.query.get("key"), self.api.api_key
        if given is not None and key:
            if not _same(given, key.encode()):
                self.api.telemetry.count("unauthorized")
                body = '<!doctype html><title>EdgeShard</title><p>Wrong API key. <a href="/">Try again</a>.</p>'
                return web.Response(status=401, text=body, content_type="text/html")
            response = web.Response(status=303, headers={"Location": PAGE_PATH, "Cache-Control": "no-store"})
            response.set_cookie(
                COOKIE,
                cookie_token(key.encode()),
                path=SNAPSHOT_PATH,
                max_age=COOKIE_MAX_AGE_S,
                httponly=True,
                samesite="Strict",
                secure=request.secure,
            )
            return response
        headers = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
        return web.Response(text=self.html, content_type="text/html", headers=headers)

    async def snapshot(self, _request: web.Request) -> web.Response:
        """GET /v1/dashboard."""
        return web.json_response(self.document(), dumps=lambda value: json.dumps(value, default=str))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """GET /v1/dashboard/events: server-sent events until the client leaves or the app stops."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        outbox = Outbox()
        stops = [
            self.api.telemetry.listen(lambda record: outbox.put("reply", record.to_json())),
            self.api.events.listen(lambda event: outbox.put("event", event.to_json())),
        ]
        self.outboxes.add(outbox)
        pacer = Pacer(beat_at=self.clock())
        try:
            await response.write(f"retry: {RETRY_MS}\n\n".encode())
            while not outbox.closing:
                items, overflowed = outbox.take()
                pacer.owed = pacer.owed or overflowed
                for kind, data in items:
                    await response.write(sse(kind, data))
                now = self.clock()
                if pacer.may_look(now):
                    document = self.document()
                    print_ = fingerprint(document)
                    if pacer.wants(now, print_):
                        await response.write(sse("snapshot", document))
                        pacer.sent(now, print_)
                if pacer.beat(now):
                    await response.write(b": heartbeat\n\n")
                await outbox.wait(pacer.wait_s(now))
            await response.write(sse("closing", {"reason": "the peer is stopping"}))
        except ConnectionResetError:  # the client went away mid-write
            pass
        finally:
            for stop in stops:
                stop()
            self.outboxes.discard(outbox)
        return response

    async def close_streams(self, _app: web.Application) -> None:
        """At shutdown: every stream says so and ends, so the server need not wait for them."""
        for outbox in list(self.outboxes):
            outbox.close()


def mount_dashboard(app: web.Application, api: Surface) -> Dashboard:
    """Serve the dashboard of `api` on `app` (the guard admits it as `dashboard_admits` says)."""
    dashboard = Dashboard(api)
    app.router.add_get(PAGE_PATH, dashboard.page)
    app.router.add_get(SNAPSHOT_PATH, dashboard.snapshot)
    app.router.add_get(STREAM_PATH, dashboard.stream)
    app.on_shutdown.append(dashboard.close_streams)
    return dashboard
