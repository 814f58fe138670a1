"""A ready layout: the route sessions are opened on. Plain data, no I/O: fail-over, the API and
the daemon's pure lifecycle share it without importing the network code."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ReadyLayout:
    """A layout whose stages all serve it: its id and the stages' peer addresses in order."""

    layout_id: str
    urls: tuple[str, ...]


LayoutSource = Callable[[float], Awaitable[ReadyLayout]]  # wait up to N seconds for a ready layout
