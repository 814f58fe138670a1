"""A shard's rotary tables: cos and sin for positions 0..n, made once and grown by doubling.

Each entry is one product of a frequency and a position, so a row is the same whichever
positions are computed with it; a step gathers its positions' rows instead of calling the
family's rotary module per pass.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryTables:
    """The family's rotary module's tables, per layer type (Gemma 3's local and global layers
    each have their own), at most `limit` positions."""

    def __init__(self, rotary: nn.Module, by_layer_type: bool, limit: int, dtype: torch.dtype, device: torch.device):
        self.rotary, self.by_layer_type, self.limit = rotary, by_layer_type, limit
        self.dtype, self.device = dtype, device
        self.tables: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, length: int, layer_type: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [positions, D] for at least `length` positions."""
        table = self.tables.get(layer_type)
        if table is None or table[0].shape[0] < length:
            held = 0 if table is None else table[0].shape[0]
            size = min(self.limit, max(length, 2 * held, 256))
            probe = torch.zeros(1, 1, 1, dtype=self.dtype, device=self.device)
            positions = torch.arange(size, device=self.device)[None]
            by_type = (layer_type,) if self.by_layer_type else ()
            cos, sin = self.rotary(probe, positions, *by_type)
            table = self.tables[layer_type] = cos[0], sin[0]
        return table
