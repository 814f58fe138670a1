"""Checks of the numbers a gossiped record carries (pure): records.py and forms.py share them."""

from __future__ import annotations

import math
from typing import Any

MAX_MEMORY = 2**52  # 4 PiB: far beyond any device, small enough for exact float arithmetic
MAX_MS = 1e6  # per unit; a device slower than this could not take part anyway


def integer(value: Any, low: int, high: int) -> bool:
    """An int (not a bool) in [low, high]."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def number(value: Any, low: float, high: float) -> bool:
    """A finite int or float (not a bool) in [low, high]."""
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and low <= value <= high
    )
