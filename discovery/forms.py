"""The weight forms a peer offers besides its own, as its record carries them (pure).

A peer may hold its units in more than one weight form (float32, int8, int4, ...): each with its
own speed and size. Its record's `unit_ms`, `bs` and `ub` are its own form's (named `fm`); `fx`
lists the others, so the planner can give a stage the form that fits (solver.Form).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .values import MAX_MEMORY, MAX_MS, integer, number

FORM_NAME = re.compile(r"[a-z][a-z0-9]{0,15}")
MAX_FORMS = 8


@dataclass(frozen=True)
class FormFigures:
    """One more form a peer offers: ms per unit, bytes per unit, and its batch curve."""

    name: str
    unit_ms: tuple[float, ...]
    unit_bytes: tuple[int, ...] = ()  # () = the model's sizes
    batch_scale: tuple[float, ...] = ()


def forms_to_wire(forms: tuple[FormFigures, ...]) -> list[list[Any]]:
    """The `fx` field."""
    return [[f.name, list(f.unit_ms), list(f.unit_bytes), list(f.batch_scale)] for f in forms]


def form_name(value: Any, field: str) -> str:
    """A form's name as records carry it ("" allowed: none named)."""
    if not isinstance(value, str) or (value and not FORM_NAME.fullmatch(value)):
        raise ValueError(f"{field}: a form name, lower-case letters and digits")
    return value


def forms_from_wire(value: Any, units: int, own: str) -> tuple[FormFigures, ...]:
    """Validate the `fx` field of a record with `units` per-unit times whose own form is `own`
    (ValueError naming what is wrong)."""
    if not isinstance(value, list) or len(value) > MAX_FORMS:
        raise ValueError(f"fx: up to {MAX_FORMS} forms")
    forms: list[FormFigures] = []
    for entry in value:
        if not (isinstance(entry, list) and len(entry) == 4):
            raise ValueError("fx: each form is [name, unit_ms, unit_bytes, batch_scale]")
        name = form_name(entry[0], "fx name")
        if not name or name in {own, *(f.name for f in forms)}:
            raise ValueError("fx: each form has a name of its own")
        unit_ms, unit_bytes, scale = entry[1], entry[2], entry[3]
        if not (isinstance(unit_ms, list) and len(unit_ms) == units and all(number(x, 0.0, MAX_MS) for x in unit_ms)):
            raise ValueError("fx unit_ms: one time per unit")
        if not sum(unit_ms) > 0:
            raise ValueError("fx unit_ms: not all zero")
        if not (
            isinstance(unit_bytes, list)
            and len(unit_bytes) in (0, units)
            and all(integer(x, 1, MAX_MEMORY) for x in unit_bytes)
        ):
            raise ValueError("fx unit_bytes: none, or bytes per unit")
        if not (isinstance(scale, list) and len(scale) <= 16 and all(number(x, 1e-6, 1e6) for x in scale)):
            raise ValueError("fx batch_scale: up to 16 factors")
        forms.append(FormFigures(name, tuple(map(float, unit_ms)), tuple(unit_bytes), tuple(map(float, scale))))
    return tuple(forms)
