"""Weight forms: how a stage holds its units' matrices, and the modules that compute with them.

`float32`, `bfloat16` and `float16` are plain dtypes. `int8` keeps every matrix as int8 with one
float scale per output row (weight-only: activations stay float32) and multiplies with torch's
`_weight_int8pack_mm`, as gpt-fast does. `int4` keeps the decoder layers' matrices as 4-bit
values in groups of 32 along the input, each group with a scale and a minimum (the layout of
llama.cpp's Q4_0, Q4_1 and Q4_K, so those files load without loss: blocks.py), multiplied by
torch's `_weight_int4pack_mm_for_cpu`. Its embedding table is the file's own int4 groups when
the file has them, else int8 with a scale per group of 32 (Q8_0's layout); its head computes
int4 logits and re-scores the leading candidates from those exact rows (the head is where 4
bits costs most accuracy). Norms, biases and the rotary tables stay float32 in every form.

The compact values are plain tensors (`Int8Weight`, `Int4Weight`): the disk cache stores them as
they are, and the kernels' own packing happens at load (its layout is the kernel's business).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .options import WeightForm

GROUP = 32  # int4: input columns per scale/offset pair (llama.cpp's Q4 block)
_INT4_TILES = 2  # inner k-tiles of the CPU int4 packing (what gpt-fast uses)
PACK_VALUES = 1 << 20  # values packed at once: the kernel's packing takes them as int32


def compute_dtype(form: WeightForm) -> torch.dtype:
    """The dtype activations, norms and KV caches use under `form`."""
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(form, torch.float32)


def is_quantized(form: WeightForm | None) -> bool:
    return form in ("int8", "int4")


# --- compact values ------------------------------------------------------------------------


@dataclass(frozen=True)
class Int8Weight:
    """W ≈ q · scale: q int8 [N, K]; scales float32 [N] (one per row, what the int8 kernel
    takes) or [N, K/GROUP] (one per group of columns: llama.cpp's Q8_0, so those rows are exact)."""

    q: torch.Tensor
    scales: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        return self.rows(torch.arange(self.q.shape[0]))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` (any shape) as float32 [..., K]."""
        q, scales = self.q[ids].float(), self.scales[ids]
        if scales.dim() == ids.dim():  # one scale per row
            return q * scales[..., None]
        grouped = q.view(*q.shape[:-1], -1, GROUP) * scales[..., None]
        return grouped.view(q.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"q": self.q, "scales": self.scales}

    @property
    def nbytes(self) -> int:
        return _bytes(self.q, self.scales)


@dataclass(frozen=True)
class Int4Weight:
    """W[n, g·32 + j] ≈ q[n, g·32 + j] · scales[n, g] + mins[n, g], q in 0..15 (the products
    of llama.cpp's Q4 blocks, so their values are kept bit for bit).

    `nibbles` uint8 [N, K/2] holds q two to a byte (low nibble: the even column)."""

    nibbles: torch.Tensor
    scales: torch.Tensor
    mins: torch.Tensor

    def values(self) -> torch.Tensor:
        """q as int32 [N, K]."""
        low, high = self.nibbles & 0x0F, self.nibbles >> 4
        return torch.stack([low, high], dim=-1).reshape(self.nibbles.shape[0], -1).to(torch.int32)

    def dequantize(self) -> torch.Tensor:
        return self.rows(torch.arange(self.nibbles.shape[0]))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` (any shape) as float32 [..., K]."""
        nibbles = self.nibbles[ids]
        q = torch.stack([nibbles & 0x0F, nibbles >> 4], dim=-1).float()  # [..., K/2, 2]
        grouped = q.view(*ids.shape, -1, GROUP)
        values = grouped * self.scales[ids][..., None] + self.mins[ids][..., None]
        return values.view(*ids.shape, -1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"nibbles": self.nibbles, "scales": self.scales, "mins": self.mins}

    @property
    def nbytes(self) -> int:
        return _bytes(self.nibbles, self.scales, self.mins)


Compact = Int8Weight | Int4Weight


def _bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def from_tensors(stored: dict[str, torch.Tensor]) -> Compact:
    """The compact value a `tensors()` dict (e.g. read back from the disk cache) holds."""
    if "nibbles" in stored:
        return Int4Weight(stored["nibbles"], stored["scales"], stored["mins"])
    return Int8Weight(stored["q"], stored["scales"])


def quantize_int8(weight: torch.Tensor, grouped: bool = False) -> Int8Weight:
    """Symmetric int8: each row's (or each group of GROUP columns') largest magnitude maps to 127."""
    weight = weight.float()
    if not grouped:
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
        q = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return Int8Weight(q.contiguous(), scales.contiguous())
    rows, columns = weight.shape
    blocks = weight.view(rows, columns // GROUP, GROUP)
    scales = (blocks.abs().amax(dim=-1) / 127).clamp(min=1e-12)
    q = torch.round(blocks / scales[..., None]).clamp(-127, 127).to(torch.int8).view(rows, columns)
    return Int8Weight(q.contiguous(), scales.contiguous())


def quantize_int4(weight: torch.Tensor) -> Int4Weight:
    """Asymmetric int4 in groups of GROUP columns: each group's range maps onto 0..15."""
    rows, columns = weight.shape
    if columns % GROUP:
        raise ValueError(f"int4 needs input sizes divisible by {GROUP}, not {columns}")
    grouped = weight.float().view(rows, columns // GROUP, GROUP)
    low, high = grouped.amin(dim=-1), grouped.amax(dim=-1)
    scales = ((high - low) / 15).clamp(min=1e-12)
    q = torch.round((grouped - low[..., None]) / scales[..., None]).clamp(0, 15).to(torch.uint8)
    return int4_from_values(q.view(rows, columns), scales, low)


def int4_from_values(q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> Int4Weight:
    """Pack q (0..15, [N, K]) two to a byte."""
    q = q.to(torch.uint8)
    nibbles = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()
    return Int4Weight(nibbles, scales.float().contiguous(), mins.float().contiguous())


# Compact targets: the two forms' matrices, and int8 rows with a scale per group (tables).
Target = Literal["int8", "int4", "int8g"]


# --- modules -------------------------------------------------------------------------------


class QuantizedLinear(nn.Module):
    """A compact Linear: built on its device, its buffers kept out of the state dict (they are
    not the model's float weights) and out of `.to(dtype)`, which would cast its scales."""

    def _apply(self, fn: Any, recurse: bool = True) -> QuantizedLinear:
        return self

    def _keep(self, name: str, value: torch.Tensor | None) -> None:
        self.register_buffer(name, value, persistent=False)


class Int8Linear(QuantizedLinear):
    """A Linear whose weight is int8 with per-row scales (weight-only quantization)."""

    q: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: Int8Weight, bias: torch.Tensor | None, device: torch.device) -> None:
        super().__init__()
        self._keep("q", weight.q.to(device))
        self._keep("scales", weight.scales.to(device))
        self._keep("bias", None if bias is None else bias.float().to(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _int8_mm(x.reshape(-1, x.shape[-1]), self.q, self.scales)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], -1).to(x.dtype)


class Int4Linear(QuantizedLinear):
    """A Linear whose weight is groupwise int4 (CPU kernel; the packing is done here, at load)."""

    packed: torch.Tensor
    scales_and_zeros: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: Int4Weight, bias: torch.Tensor | None, device: torch.device) -> None:
        super().__init__()
        # The kernel computes (q − 8) · scale + zero; its scales and zeros are [K/GROUP, N, 2],
        # written straight into bfloat16 (a float32 stack of them was a load's largest transient).
        pairs = torch.empty(weight.scales.shape[1], weight.scales.shape[0], 2, dtype=torch.bfloat16)
        pairs[..., 0] = weight.scales.T
        pairs[..., 1] = (weight.mins + 8 * weight.scales).T
        self._keep("packed", _int4_pack(weight).to(device))
        self._keep("scales_and_zeros", pairs.to(device))
        self._keep("bias", None if bias is None else bias.float().to(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        out: torch.Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scales_and_zeros)
        out = out.float()
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], -1).to(x.dtype)


def _int4_pack(weight: Int4Weight) -> torch.Tensor:
    """The kernel's packing, PACK_VALUES at a time: it takes q as int32, 8 bytes per value
    against the half byte held, and rows pack independently (tested)."""
    rows, half = weight.nibbles.shape
    step = max(64, PACK_VALUES // (2 * half) // 64 * 64)  # the packing tiles rows 64 at a time
    packed = torch.empty(rows, half, dtype=torch.uint8)
    for start in range(0, rows, step):
        part = Int4Weight(weight.nibbles[start : start + step], weight.scales, weight.mins)
        packed[start : start + step] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(part.values(), _INT4_TILES)
    return packed


def _int8_mm(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = torch.ops.aten._weight_int8pack_mm(x.float(), q, scales)
    return out


def float_linear(weight: torch.Tensor, device: torch.device, dtype: torch.dtype) -> nn.Linear:
    """A bias-free Linear around `weight` (shared, not copied, when already on device and dtype)."""
    with torch.device("meta"):
        module = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    module.weight = nn.Parameter(weight.to(device, dtype), requires_grad=False)
    return module


def linear_module(
    weight: torch.Tensor | Compact, bias: torch.Tensor | None, device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """The Linear for `weight` in whatever form it is held."""
    if isinstance(weight, Int4Weight):
        return Int4Linear(weight, bias, device)
    if isinstance(weight, Int8Weight):
        return Int8Linear(weight, bias, device)
    if bias is not None:
        raise ValueError("a float Linear with a bias goes in through the state dict")
    return float_linear(weight, device, dtype)


class RefinedHead(QuantizedLinear):
    """The int4 form's head: int4 logits for the whole vocabulary (fast), then the leading
    `REFINE` candidates' logits recomputed in float32 from `exact` rows: the file's own int4
    groups when it has them (then `coarse` is the same matrix), else int8 with a scale per group
    of 32 (exact for a Q8_0 file). A 4-bit head alone moved the top token on about one step in
    ten here; with the candidates re-scored, sampling sees exact logits where the mass is."""

    REFINE = 64

    def __init__(self, coarse: Int4Weight, exact: Compact, device: torch.device) -> None:
        super().__init__()
        self.coarse = Int4Linear(coarse, None, device)
        # Shared with the embedding table on a one-stage shard; buffers so weight_bytes sees them.
        parts = {name: tensor.to(device) for name, tensor in exact.tensors().items()}
        for name, tensor in parts.items():
            self._keep(f"exact_{name}", tensor)
        self.exact = from_tensors(parts)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.coarse(hidden).float()  # [B, V]
        top = logits.topk(min(self.REFINE, logits.shape[-1]), dim=-1).indices  # [B, k]
        rows = self.exact.rows(top)  # [B, k, H]
        exact = torch.einsum("bh,bkh->bk", hidden.float(), rows)
        refined: torch.Tensor = logits.scatter(-1, top, exact)
        return refined


class Table:
    """The embedding matrix as a lookup table: float rows, or compact rows (int8 with a scale
    per group, or int4 groups) dequantized as they are looked up."""

    def __init__(self, weight: torch.Tensor | Compact, device: torch.device, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.weight: torch.Tensor | None = None
        self.compact: Compact | None = None
        if isinstance(weight, torch.Tensor):
            self.weight = weight.to(device, dtype)
        else:
            self.compact = from_tensors({name: t.to(device) for name, t in weight.tensors().items()})

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows for token ids, in the compute dtype."""
        if self.weight is not None:
            return nn.functional.embedding(ids, self.weight)
        assert self.compact is not None
        return self.compact.rows(ids).to(self.dtype)

    def tensors(self) -> list[torch.Tensor]:
        if self.weight is not None:
            return [self.weight]
        assert self.compact is not None
        return list(self.compact.tensors().values())


# --- loading -------------------------------------------------------------------------------

EMBEDDING, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def layer_target(name: str, form: WeightForm) -> WeightForm | None:
    """The compact form a decoder layer's tensor takes under `form` (None: it stays float):
    the matrices of the projections; norms and biases stay float."""
    return form if is_quantized(form) and name.endswith("_proj.weight") else None
