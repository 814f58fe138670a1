"""Persistent WebSocket links: one outbound socket per target URL, many sessions on it.

`Links.send` connects on first use and bounds every wait with a timeout. Frames for one link
queue up while a message is being written, and the next message carries all of them as one
batch: the outputs of a pass (or the next steps of sessions whose tokens came back together)
reach the receiver together, so the sessions computed together stay in one pass there instead
of splitting at every hop. aiohttp's `send_bytes` waits for the socket to drain, which is the
back-pressure: a slow next stage slows its senders (each `send` returns once its frame is
written) instead of growing a queue. Frames that come back on an outbound
socket (error reports from the receiver) go to `on_frame`.
`frame_endpoint` is the inbound side: an aiohttp handler that decodes each binary message and hands
it to a callback; a malformed frame is answered with an error frame and the link stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from .. import wire
from ..errors import ProtocolError, StageError
from ..wire import MAX_BATCH_FRAMES, Error, Frame, decode_message, encode, encode_batch
from . import egress
from .servers import SOCKETS

log = logging.getLogger(__name__)

Reply = Callable[[Frame], Awaitable[None]]
FrameHandler = Callable[[Frame, Reply], Awaitable[None]]
CloseHandler = Callable[[str], Awaitable[None]]
Sign = Callable[[str, str], dict[str, str]]  # (method, path) → headers that authenticate a request

CONNECT_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 30.0
STAGE_PATH = "/stage"


class Links:
    """Outbound links by URL."""

    def __init__(
        self,
        on_frame: FrameHandler | None = None,
        on_close: CloseHandler | None = None,
        sign: Sign | None = None,
        pin: Callable[[str], Any] | None = None,
    ) -> None:
        self.sign = sign  # headers that authenticate a link's upgrade request (the cluster secret)
        self.pin = pin  # aiohttp's ssl= for a URL (the peer's pinned certificate under --tls)
        self._session: aiohttp.ClientSession | None = None
        self._sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._outbox: dict[str, list[tuple[bytes, asyncio.Future[None], float]]] = {}  # with release times
        self._writers: dict[str, asyncio.Task[None]] = {}
        self._on_frame = on_frame
        self._on_close = on_close  # the receiver closed the link (e.g. its process died)
        self._closing = False

    async def _socket(self, url: str) -> aiohttp.ClientWebSocketResponse:
        socket = self._sockets.get(url)
        if socket is not None and not socket.closed:
            return socket
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S))
        try:
            target = URL(url + STAGE_PATH)
            headers = self.sign("GET", target.raw_path_qs) if self.sign is not None else {}
            socket = await asyncio.wait_for(
                self._session.ws_connect(
                    target,
                    max_msg_size=wire.MAX_FRAME_BYTES,
                    compress=0,
                    headers=headers,
                    ssl=self.pin(url) if self.pin is not None else True,
                ),
                CONNECT_TIMEOUT_S,
            )
        except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as error:  # RuntimeError: closed
            raise StageError(f"cannot reach {url}: {error or type(error).__name__}") from error
        self._sockets[url] = socket
        # The reader is owned by this object and cancelled in close(): not fire-and-forget.
        self._readers[url] = asyncio.get_running_loop().create_task(self._read(url, socket))
        return socket

    async def _read(self, url: str, socket: aiohttp.ClientWebSocketResponse) -> None:
        async for message in socket:
            if message.type != aiohttp.WSMsgType.BINARY:
                continue
            try:
                frames = decode_message(message.data)
            except ProtocolError as error:
                log.warning("bad frame back from %s: %s", url, error)
                continue
            for frame in frames:
                if self._on_frame is not None:
                    await self._on_frame(frame, lambda reply: self.send(url, reply))
        # The socket ended without us closing it: tell the owner now rather than at the next send.
        if not self._closing and self._on_close is not None:
            await self._on_close(url)

    async def send(self, url: str, frame: Frame | bytes) -> None:
        """Send one frame (or its encoded bytes) to the stage at `url` (connecting if needed);
        returns once it is written, StageError when the link fails."""
        if self._closing:
            raise StageError(f"the links are closed (to {url})")
        data = frame if isinstance(frame, bytes) else encode(frame)
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.setdefault(url, []).append((data, written, egress.release_time(url)))
        writer = self._writers.get(url)
        if writer is None or writer.done():
            self._writers[url] = asyncio.get_running_loop().create_task(self._write(url))
        await written

    async def _write(self, url: str) -> None:
        outbox = self._outbox[url]
        while outbox:
            await egress.until(outbox[0][2])  # the testbed's emulated link delay (egress.py)
            count, size, now = 0, 0, time.monotonic()
            for data, _written, release in outbox[:MAX_BATCH_FRAMES]:
                if count and (size + len(data) > wire.MAX_FRAME_BYTES - 1024 or release > now):
                    break
                count, size = count + 1, size + len(data)
            batch, outbox[:count] = outbox[:count], []
            message = batch[0][0] if count == 1 else encode_batch([data for data, _written, _release in batch])
            failure: BaseException | None = StageError(f"the link to {url} was closed")
            try:
                await self._send_message(url, message)
                failure = None
            except StageError as error:
                failure = error
            finally:  # also when cancelled or failing otherwise: no sender waits forever
                for _data, written, _release in batch:
                    if written.done():
                        continue
                    if failure is None:
                        written.set_result(None)
                    else:
                        written.set_exception(failure)
                        written.exception()  # a sender that went away must not leave it unretrieved

    async def _send_message(self, url: str, message: bytes) -> None:
        socket = await self._socket(url)
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):  # not wait_for: on 3.11 it can swallow a cancel
                await socket.send_bytes(message)
        except (ConnectionError, aiohttp.ClientError, TimeoutError, RuntimeError) as error:
            await socket.close()
            raise StageError(f"link to {url} broke: {error or type(error).__name__}") from error

    async def close(self) -> None:
        """Close every link."""
        self._closing = True
        for task in [*self._readers.values(), *self._writers.values()]:
            task.cancel()
        for outbox in self._outbox.values():  # senders still waiting learn the link is gone
            for _data, written, _release in outbox:
                if not written.done():
                    written.set_exception(StageError("the link was closed"))
                    written.exception()
            outbox.clear()
        for task in self._readers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for socket in self._sockets.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(socket.close(), 1.0)
        if self._session is not None:
            await self._session.close()
        self._sockets.clear()
        self._readers.clear()


def frame_endpoint(
    handler: FrameHandler, on_close: Callable[[Reply], Awaitable[None]] | None = None
) -> Callable[[web.Request], Awaitable[web.WebSocketResponse]]:
    """An aiohttp handler for inbound links: decode, dispatch, answer bad frames. Each link's
    `reply` callable is its identity: `on_close(reply)` runs when that link ends."""

    async def endpoint(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(max_msg_size=wire.MAX_FRAME_BYTES, compress=False)
        await socket.prepare(request)
        if SOCKETS in request.app:
            request.app[SOCKETS].add(socket)
        send_lock = asyncio.Lock()
        warned = False  # one log line per link, not one per bad frame

        async def reply(frame: Frame) -> None:
            await egress.hold(request.remote)  # the testbed's emulated link delay (egress.py)
            async with send_lock:
                if not socket.closed:
                    async with asyncio.timeout(SEND_TIMEOUT_S):
                        await socket.send_bytes(encode(frame))

        try:
            async for message in socket:
                if message.type == aiohttp.WSMsgType.BINARY:
                    try:
                        frames = decode_message(message.data)
                    except ProtocolError as error:
                        if not warned:
                            log.warning(
                                "bad frame from %s: %s (further ones on this link unlogged)", request.remote, error
                            )
                            warned = True
                        await reply(Error("", error.code, error.message))
                        continue
                    for frame in frames:  # in order, before anything else runs: a batch stays one
                        await handler(frame, reply)
                elif message.type == aiohttp.WSMsgType.TEXT:
                    await reply(Error("", "bad-frame", "frames are binary msgpack"))
        finally:
            if on_close is not None:
                await on_close(reply)
        return socket

    return endpoint
