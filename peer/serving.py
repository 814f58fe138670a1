"""Start and stop aiohttp servers on a host and port (port 0: any free one)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


async def start_server(
    mount: Callable[[web.Application], None], host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve an app with the routes `mount` adds; returns the runner and the base URL."""
    app = web.Application()
    mount(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"http://{bound_host}:{bound_port}"
