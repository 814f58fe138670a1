"""Testbed only: a delay on what this peer sends to other peers, as netem's `delay` would add on a
host's way out (this kernel has no netem, so the testbed emulates link delay in the peer).

One peer is one process is one emulated host, so the delay is the process's: every stage frame
(`links.py`, both directions), every probe request and answer (`discovery/probe.py`), and nothing
else (gossip and the user API are not delayed). Frames are held, not serialised: each leaves its
delay after it was handed over, so a link still carries many frames in flight, as a real one does.
"""

from __future__ import annotations

import asyncio
import time

_delay_s = 0.0


def set_delay_ms(milliseconds: float) -> None:
    """Every later send leaves `milliseconds` after it is handed over (0: at once)."""
    if milliseconds < 0:
        raise ValueError("a delay of at least 0 ms")
    global _delay_s
    _delay_s = milliseconds / 1000


def delay_ms() -> float:
    return _delay_s * 1000


def release_time() -> float:
    """When a send handed over now may leave (monotonic seconds)."""
    return time.monotonic() + _delay_s


async def until(release: float) -> None:
    """Wait until `release` (no wait, and no yield, when it has passed or there is no delay)."""
    wait = release - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)


async def hold() -> None:
    """Wait out the delay of a send handed over now."""
    if _delay_s > 0:
        await asyncio.sleep(_delay_s)
