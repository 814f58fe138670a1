"""Devices and dtypes as torch knows them."""

from __future__ import annotations

import torch

from .options import FORMS, Dtype, WeightForm

DTYPES: dict[Dtype, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def pick_device(choice: str = "auto") -> str:
    """`auto` picks cuda, then mps, then cpu."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_form(device: str) -> WeightForm:
    """The form `auto` means where no profile chooses: int4 on a CPU (its kernel reads an
    eighth of float32's bytes per token), bfloat16 on a GPU, float16 on Apple's."""
    if device.startswith("cuda"):
        return "bfloat16"
    if device.startswith("mps"):
        return "float16"
    return "int4" if hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") else "float32"


def resolve_form(choice: str, device: str) -> WeightForm:
    """A --weights choice as a form this device runs (`auto`: `default_form`)."""
    if choice == "auto":
        return default_form(device)
    if choice not in FORMS:
        raise ValueError(f"--weights {choice!r} is not one of {', '.join(FORMS)} or auto")
    if choice == "int4" and not device.startswith("cpu"):
        raise ValueError("--weights int4 has a CPU kernel only; use int8 or bfloat16 on a GPU")
    return choice
