"""Devices and dtypes as torch knows them."""

from __future__ import annotations

import torch

from .options import Dtype

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
