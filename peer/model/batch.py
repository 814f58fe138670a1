"""Selective batching (Orca, OSDI '22): one decoder-layer pass for many sessions at once.

Every session's new rows (one per decode step, a few hundred for a prefill chunk) are stacked
into one [N, H] tensor, so the weight-bound parts of a layer read each weight matrix once per
pass: the q/k/v projections as one fused matrix, o, the MLP's gate and up as one fused matrix,
and down (4 matrix products a layer, not 7: at one row a call's fixed cost is most of a small
matrix's time). Attention is the one part that differs per session, and it is batched too: all
decode rows of a pass attend in one call over a view of the slot pool (kvcache.py), each to its
own slot's keys under a length mask; a prompt chunk attends alone (causal). Everything that is
the same for every layer of a pass (positions, slots, masks) is worked out once, in
`plan_pass`.

The maths is the family's own (families.py): transformers' RMSNorm and activation modules,
Qwen2's biases in the fused projection, Qwen3's q_norm/k_norm per head before the rotary
embedding; the rotary embedding and the attention call are those transformers' sdpa path makes
(for one decode row without a mask: grouped-query attention inside sdpa; with a mask: each
query head of a group as a row of its key/value head, transformers' `pack_gqa`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.functional import scaled_dot_product_attention as sdpa

from .compiled import EAGER, LayerParts
from .kvcache import KVPool


@dataclass(frozen=True)
class Slice:
    """One session's rows [offset, offset + length) in the stacked batch, at `position`, in
    pool slot `slot`."""

    offset: int
    length: int
    position: int
    slot: int

    @property
    def rows(self) -> slice:
        """These rows in the stacked batch."""
        return slice(self.offset, self.offset + self.length)


@dataclass(frozen=True)
class Decode:
    """The single-row steps of a pass, attending together over pool slots [low, high)."""

    rows: torch.Tensor  # [B] rows of the stacked batch
    slots: torch.Tensor  # [B] their slots
    positions: torch.Tensor  # [B] the position each writes
    low: int
    high: int
    keys: int  # key positions the view spans: the longest session's length after this step
    in_range: torch.Tensor  # [B] slot - low
    mask: torch.Tensor | None  # [S, 1, 1, keys] (None: no padding, every slot in range at `keys`)
    # The pass is these rows alone, in slot order, filling [low, high): attention reads and
    # writes the stacked rows as they are, with no gather or scatter (fewer kernels a layer,
    # which is most of a decode step's time on a GPU).
    dense: bool


@dataclass(frozen=True)
class PassPlan:
    """What every layer of one pass shares."""

    positions: torch.Tensor  # [N] the position of each row
    decode: Decode | None
    prompts: tuple[Slice, ...]  # multi-row steps: each attends alone


def plan_pass(slices: Sequence[Slice], device: torch.device) -> PassPlan:
    """The indices and masks of a pass of `slices` (stacked in order). Every index goes to the
    device in one copy: on a GPU each copy from host memory waits for the stream."""
    single = [s for s in slices if s.length == 1]
    columns = [
        [p for s in slices for p in range(s.position, s.position + s.length)],
        [s.offset for s in single],
        [s.slot for s in single],
        [s.position for s in single],
    ]
    low = min((s.slot for s in single), default=0)
    columns.append([s.slot - low for s in single])
    moved = torch.tensor([i for column in columns for i in column]).to(device)
    positions, rows, slots, written, in_range = torch.split(moved, [len(c) for c in columns])
    decode = None
    if single:
        high = max(s.slot for s in single) + 1
        keys = max(s.position for s in single) + 1
        dense = len(single) == len(slices) and all(s.slot == low + i for i, s in enumerate(single))
        same_length = dense and all(s.position + 1 == keys for s in single)
        mask = None
        if not same_length and (len(single) > 1 or high - low > 1):
            lengths = torch.ones(high - low, dtype=torch.long)  # slots in range but not in the pass
            for s in single:
                lengths[s.slot - low] = s.position + 1
            mask = (torch.arange(keys)[None, :] < lengths[:, None])[:, None, None, :].to(device)
        decode = Decode(
            rows=rows,
            slots=slots,
            positions=written,
            low=low,
            high=high,
            keys=keys,
            in_range=in_range,
            mask=mask,
            dense=dense,
        )
    return PassPlan(positions, decode, tuple(s for s in slices if s.length > 1))


def layer_forward(
    layer: nn.Module,
    index: int,
    pool: KVPool,
    hidden: torch.Tensor,
    cos_sin: tuple[torch.Tensor, torch.Tensor],
    plan: PassPlan,
    parts: LayerParts = EAGER,
) -> torch.Tensor:
    """One decoder layer over the stacked rows [N, H]; `index` is the layer's place in `pool`.
    cos_sin: the rotary tables at each row's position, [N, D]."""
    block: Any = layer  # a family's decoder layer (families.py), projections fused by the shard
    attention = block.self_attn
    rows, dim = hidden.shape[0], attention.head_dim
    heads, kv_heads = attention.config.num_attention_heads, attention.config.num_key_value_heads
    queries, keys, values = parts.project(block, hidden, cos_sin[0], cos_sin[1])
    scale = attention.scaling
    window = getattr(attention, "sliding_window", None)  # set on Gemma's sliding layers only
    softcap = getattr(attention, "attn_logit_softcapping", None)  # Gemma 2
    plain = window is None and softcap is None
    decode = plan.decode
    if decode is not None and decode.dense:
        attended = _decode_attention(pool, index, decode, queries, keys, values, scale, window, softcap)
        return parts.finish(block, hidden, attended)
    attended = torch.empty(rows, heads * dim, dtype=hidden.dtype, device=hidden.device)
    if decode is not None:
        rows_of = decode.rows
        attended[rows_of] = _decode_attention(
            pool, index, decode, queries[rows_of], keys[rows_of], values[rows_of], scale, window, softcap
        )
    for part in plan.prompts:
        span = part.rows
        end = part.position + part.length
        where = (part.slot, slice(None), slice(part.position, end))
        pool.write(index, where, keys[span].transpose(0, 1), values[span].transpose(0, 1))
        q = queries[span].transpose(0, 1)[None]  # [1, heads, T, D]
        k, v = pool.read(index, slice(part.slot, part.slot + 1), end)
        if part.position == 0 and plain:
            out = sdpa(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
        else:
            key_positions = torch.arange(end, device=hidden.device)[None, :]
            query_positions = plan.positions[span][:, None]
            causal = key_positions <= query_positions
            if window is not None:
                causal &= key_positions > query_positions - window
            if plain:
                out = sdpa(q, k, v, attn_mask=causal[None, None], scale=scale, enable_gqa=True)
            else:  # a group's heads as rows of its key/value head, as in the decode pass
                grouped = q.reshape(1, kv_heads, heads // kv_heads * part.length, dim)
                mask = causal.repeat(heads // kv_heads, 1)[None, None]
                out = _attend(grouped, k, v, mask, scale, softcap).reshape(1, heads, part.length, dim)
        attended[span] = out[0].transpose(0, 1).reshape(part.length, heads * dim)
    return parts.finish(block, hidden, attended)


def _decode_attention(
    pool: KVPool,
    index: int,
    decode: Decode,
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """The decode rows' attention over their slots, [B, heads * D]; queries [B, heads, D] and
    keys, values [B, kv_heads, D] are the decode rows alone, in the pass's order."""
    heads, dim = queries.shape[1], queries.shape[2]
    kv_heads = keys.shape[1]
    pool.write(index, (decode.slots, slice(None), decode.positions), keys, values)
    k, v = pool.read(index, slice(decode.low, decode.high), decode.keys)
    if decode.high - decode.low == 1 and decode.mask is None and window is None and softcap is None:
        # one session: as transformers' decode step (grouped-query attention inside sdpa)
        return sdpa(queries[:, :, None], k, v, scale=scale, enable_gqa=True).reshape(1, heads * dim)
    if decode.dense:
        q = queries.reshape(-1, kv_heads, heads // kv_heads, dim)  # pack_gqa: a group's heads as rows
    else:
        q = queries.new_zeros(decode.high - decode.low, heads, dim)
        q[decode.in_range] = queries
        q = q.view(-1, kv_heads, heads // kv_heads, dim)
    mask = decode.mask
    if window is not None:
        ends = torch.zeros(decode.high - decode.low, dtype=torch.long, device=queries.device)
        ends[decode.in_range] = decode.positions
        near = torch.arange(decode.keys, device=queries.device)[None, :] > (ends - window)[:, None]
        mask = near[:, None, None, :] if mask is None else mask & near[:, None, None, :]
    out = _attend(q, k, v, mask, scale, softcap).reshape(-1, heads * dim)
    return out if decode.dense else out[decode.in_range]


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float, softcap: float | None
) -> torch.Tensor:
    """Attention of q [B, kv_heads, R, D] (R rows per key/value head) over k, v [B, kv_heads,
    S, D] under a boolean mask [B or 1, 1, R or 1, S]; with `softcap`, Gemma 2's: scores
    capped as tanh(s / cap) * cap before the mask and a float32 softmax (transformers' eager
    attention; sdpa cannot cap)."""
    if softcap is None:
        return sdpa(q, k, v, attn_mask=mask, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v)
