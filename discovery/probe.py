"""Link probes: round-trip time and bandwidth to another peer, and how they are published.

The endpoint `GET /probe?bytes=N` answers N bytes. A probe takes the best of a few empty
round trips, before and after one larger download for the bandwidth, as the RTT. Before alone
is not enough: two peers probe each other at join, a second or so apart, and on a slow link
one's empty trips then queue behind the other's download (the testbed's 2.5 Mbps link read
512-658 ms round trips against 17 ms of delay, and the planner routed around it). Measurements jitter, and every
published change re-plans the cluster, so `settle` (pure) publishes a new figure only when it
leaves a factor-of-two band around the published one, and then rounded to a power of two.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from .auth import Authenticator

PROBE_PATH = "/probe"
DOWNLOAD_BYTES = 2**20
MAX_PROBE_BYTES = DOWNLOAD_BYTES  # a probe needs no more; members only (the peer port's auth)
ROUND_TRIPS = 3
MAX_MBPS = 100_000.0  # loopback measures "infinite"; cap it at something finite
_ZEROS = bytes(MAX_PROBE_BYTES)


Hold = Callable[[], Awaitable[None]]  # waits out an emulated link delay (the testbed's; else none)


async def _no_delay() -> None:
    return None


_hold: Hold = _no_delay


def emulate_delay(hold: Hold) -> None:
    """Testbed only: every probe request and answer of this process waits `hold` first, so probes
    measure the link delay the peer emulates (peer/pipeline/egress.py)."""
    global _hold
    _hold = hold


async def probe_endpoint(request: web.Request) -> web.Response:
    """Answer `bytes` zero bytes (capped), after the emulated delay."""
    try:
        count = min(max(int(request.query.get("bytes", "0")), 0), MAX_PROBE_BYTES)
    except ValueError:
        return web.Response(status=400, text="bytes: an integer")
    await _hold()
    return web.Response(body=_ZEROS[:count], content_type="application/octet-stream")


async def measure_link(
    session: aiohttp.ClientSession,
    address: str,
    download: int = DOWNLOAD_BYTES,
    auth: Authenticator | None = None,
    ssl: Any = True,
) -> tuple[float, float]:
    """(mbps, rtt_ms) to the peer at `address`, each request sent after the emulated delay; raises
    aiohttp/OS errors when unreachable (and aiohttp.ClientResponseError when it refuses us)."""
    auth = auth or Authenticator(None)

    async def get(count: int) -> bytes:
        path = f"{PROBE_PATH}?bytes={count}"
        await _hold()
        async with session.get(address + path, headers=auth.sign("GET", path), ssl=ssl) as response:
            response.raise_for_status()
            body = b""  # at most what was asked for, whatever the other side sends
            while len(body) < count and (chunk := await response.content.read(count - len(body))):
                body += chunk
            return body

    async def best_trip() -> float:
        trips = []
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            await get(0)
            trips.append(time.perf_counter() - started)
        return min(trips)

    before = await best_trip()
    started = time.perf_counter()
    body = await get(download)
    took = time.perf_counter() - started
    rtt = min(before, await best_trip())  # the download less the best trip: an inflated one would
    elapsed = max(took - rtt, 1e-6)  # read a slow link as faster
    return min(len(body) * 8 / elapsed / 1e6, MAX_MBPS), rtt * 1000


def _power_of_two(value: float) -> float:
    return float(2 ** round(math.log2(value))) if value > 0 else 0.0


def settle(published: float | None, measured: float) -> float:
    """The figure to publish: the old one while the measurement stays within a factor of two,
    else the measurement rounded to a power of two."""
    if published is not None and published > 0 and measured > 0 and 0.5 <= measured / published <= 2.0:
        return published
    return _power_of_two(measured)
