"""Testbed only: a delay on what this peer sends to other peers, as netem's `delay` would add on a
host's way out (this kernel has no netem, so the testbed emulates link delay in the peer).

One peer is one process is one emulated host, so the delay is the process's: every stage frame
(`links.py`, both directions), every probe request and answer (`discovery/probe.py`), and nothing
else (gossip and the user API are not delayed). Frames are held, not serialised: each leaves its
delay after it was handed over, so a link still carries many frames in flight, as a real one does.
What a peer sends to its own host (its origin to its own stage) is not delayed: that traffic
never leaves the host, and netem on its interface would not see it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from yarl import URL

_delay_s = 0.0
_local: frozenset[str] = frozenset()


def set_delay_ms(milliseconds: float, local: Iterable[str] = ()) -> None:
    """Every later send leaves `milliseconds` after it is handed over (0: at once), except to the
    hosts in `local` (this host's own addresses, loopback among them)."""
    if milliseconds < 0:
        raise ValueError("a delay of at least 0 ms")
    global _delay_s, _local
    _delay_s = milliseconds / 1000
    _local = frozenset(local)


def delay_ms() -> float:
    return _delay_s * 1000


def _delayed(target: str | None) -> bool:
    """Whether a send to `target` (a URL, or a remote address) leaves the host."""
    if _delay_s <= 0:
        return False
    host = URL(target).host if target and "://" in target else target
    return host not in _local


def release_time(target: str | None = None) -> float:
    """When a send to `target` handed over now may leave (monotonic seconds)."""
    return time.monotonic() + (_delay_s if _delayed(target) else 0.0)


async def until(release: float) -> None:
    """Wait until `release` (no wait, and no yield, when it has passed or there is no delay)."""
    wait = release - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)


async def hold(target: str | None = None) -> None:
    """Wait out the delay of a send to `target` handed over now."""
    if _delayed(target):
        await asyncio.sleep(_delay_s)
