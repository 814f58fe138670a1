"""Selective batching (Orca, OSDI '22): one decoder-layer pass for many sessions at once.

Every session's new rows (one per decode step, a few hundred for a prefill chunk) are stacked
into one [1, N, H] tensor, so the weight-bound parts of a layer (norms, q/k/v/o projections,
the MLP) read each weight matrix once per batch instead of once per session. Attention is the
one part that differs per session: each slice attends to its own KV cache, with the same
attention function transformers' Llama layer calls. The layers' own submodules do the maths,
so a batch of one computes what the family's decoder layer computes (families.py): Qwen2's
biases live in its projections, and Qwen3's q_norm/k_norm are applied per head after the
projection and before the rotary embedding, in the order `Qwen3Attention` applies them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, eager_attention_forward


@dataclass(frozen=True)
class Slice:
    """One session's rows [offset, offset + length) in the stacked batch, at `position`."""

    offset: int
    length: int
    position: int
    cache: DynamicCache

    @property
    def rows(self) -> slice:
        """These rows in the stacked batch."""
        return slice(self.offset, self.offset + self.length)


def causal_mask(position: int, length: int, device: torch.device) -> torch.Tensor | None:
    """The mask for `length` queries after `position` cached keys (None where sdpa's implicit
    causal mask or no mask is right: one query, or an empty cache)."""
    if length == 1 or position == 0:
        return None
    keys = torch.arange(position + length, device=device)
    queries = torch.arange(position, position + length, device=device)
    return (keys[None, :] <= queries[:, None])[None, None]  # [1, 1, T, S]


def _attention_function(implementation: str | None) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    """The attention function transformers' Llama layer would call for this implementation."""
    interface = ALL_ATTENTION_FUNCTIONS
    if hasattr(interface, "get_interface"):  # transformers >= 5.2x validates the name
        return interface.get_interface(implementation or "eager", eager_attention_forward)
    return interface.get(implementation or "eager", eager_attention_forward)  # type: ignore[no-any-return]


def layer_forward(
    layer: nn.Module,
    local_index: int,
    hidden: torch.Tensor,
    cos_sin: tuple[torch.Tensor, torch.Tensor],
    slices: Sequence[Slice],
    masks: Sequence[torch.Tensor | None],
) -> torch.Tensor:
    """One decoder layer over the stacked rows [1, N, H] of every session in `slices`."""
    block: Any = layer  # a family's decoder layer (families.py): the submodules below
    attention = block.self_attn
    head_dim = attention.head_dim
    residual = hidden
    normed = block.input_layernorm(hidden)
    # [1, N, heads, D]: projections for the whole batch at once.
    queries = attention.q_proj(normed).view(1, hidden.shape[1], -1, head_dim)
    keys = attention.k_proj(normed).view(1, hidden.shape[1], -1, head_dim)
    values = attention.v_proj(normed).view(1, hidden.shape[1], -1, head_dim)
    if hasattr(attention, "q_norm"):  # Qwen3: RMSNorm over each head's D, before the rotary
        queries, keys = attention.q_norm(queries), attention.k_norm(keys)
    cos, sin = cos_sin
    attend = _attention_function(attention.config._attn_implementation)
    outputs = []
    for part, mask in zip(slices, masks, strict=True):
        rows = part.rows
        q = queries[:, rows].transpose(1, 2)
        k = keys[:, rows].transpose(1, 2)
        v = values[:, rows].transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos[:, rows], sin[:, rows])
        k, v = part.cache.update(k, v, local_index)
        out, _ = attend(attention, q, k, v, mask, dropout=0.0, scaling=attention.scaling)
        outputs.append(out.reshape(1, part.length, -1))
    attended = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    hidden = residual + attention.o_proj(attended.contiguous())
    output: torch.Tensor = hidden + block.mlp(block.post_attention_layernorm(hidden))
    return output
