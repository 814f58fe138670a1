"""What systemd sees of the peer: sd_notify(3) states, watchdog keep-alives and the stop's bounds.

`notify` sends one datagram to $NOTIFY_SOCKET (no libsystemd): READY=1 once the peer serves,
STOPPING=1 when a stop begins, WATCHDOG=1 keep-alives. The keep-alives come from a task on the
peer's event loop (`keep_alive`), not from a thread: a wedged loop (a blocking call, a busy
coroutine that never yields) stops them and systemd restarts the service after `WatchdogSec=`,
while a long forward pass on the stage's worker thread leaves the loop free and does not.
`watchdog_interval_s` and `wait_until` are pure or nearly so, for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping

# The unit's TimeoutStopSec is 30 s: sessions get DRAIN_S of it, the rest is for closing down.
DRAIN_S = 20.0
# Of DRAIN_S, kept for after the leave: sessions passing through this stage fail over at their
# origins once the others re-plan (they send Close); this waits for that.
STAGE_DRAIN_S = 5.0
POLL_S = 0.1


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """sd_notify(3): one datagram to $NOTIFY_SOCKET ("@name": the abstract namespace); whether
    it was sent (False without systemd, or when the socket is gone)."""
    path = environ.get("NOTIFY_SOCKET")
    if not path or path[0] not in "/@":
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """How often to send WATCHDOG=1: half of $WATCHDOG_USEC (sd_watchdog_enabled(3)'s advice),
    or None when systemd asks for none, or asks another process ($WATCHDOG_PID)."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 2 / 1e6


async def keep_alive(interval_s: float, send: Callable[[str], object] = notify) -> None:
    """Send WATCHDOG=1 every `interval_s` seconds from this event loop, until cancelled."""
    while True:
        send("WATCHDOG=1")
        await asyncio.sleep(interval_s)


def start_watchdog(environ: Mapping[str, str] = os.environ) -> asyncio.Task[None] | None:
    """The keep-alive task when systemd wants one (None otherwise)."""
    interval = watchdog_interval_s(environ, os.getpid())
    if interval is None:
        return None
    return asyncio.get_running_loop().create_task(keep_alive(interval), name="watchdog")


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` (if any) and wait for it to end."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def wait_until(done: Callable[[], bool], deadline: float, hurry: asyncio.Event | None = None) -> bool:
    """Poll `done` until it holds (True), the monotonic `deadline` passes or `hurry` is set (False)."""
    while not done():
        left = deadline - time.monotonic()
        if left <= 0 or (hurry is not None and hurry.is_set()):
            return False
        await asyncio.sleep(min(POLL_S, left))
    return True
