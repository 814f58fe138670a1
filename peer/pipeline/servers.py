"""Start and stop aiohttp servers on a host and port (port 0: any free one)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import weakref
from collections.abc import Callable

from aiohttp import WSCloseCode, web

SOCKETS: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey("sockets")


async def _close_sockets(app: web.Application) -> None:
    """Close inbound WebSockets at shutdown instead of waiting for their peers to."""
    sockets: weakref.WeakSet[web.WebSocketResponse] = app[SOCKETS]
    for socket in list(sockets):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(socket.close(code=WSCloseCode.GOING_AWAY), 1.0)


SHUTDOWN_TIMEOUT_S = 2.0


async def start_server(
    mount: Callable[[web.Application], None],
    host: str = "127.0.0.1",
    port: int = 0,
    cancel_on_disconnect: bool = False,
    client_max_size: int = 2**20,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve an app with the routes `mount` adds; returns the runner and the base URL.

    `cancel_on_disconnect`: a handler whose client goes away is cancelled (the API: a client
    that hangs up mid-answer frees its session at once). `client_max_size`: the largest request
    body a handler may read."""
    app = web.Application(client_max_size=client_max_size)
    app[SOCKETS] = weakref.WeakSet()
    app.on_shutdown.append(_close_sockets)
    mount(app)
    # Open WebSockets would hold a graceful shutdown for the default 60 s; links reconnect anyway.
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S, handler_cancellation=cancel_on_disconnect
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"{'https' if ssl_context else 'http'}://{bound_host}:{bound_port}"
