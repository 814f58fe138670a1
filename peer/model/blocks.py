"""GGUF quantized blocks read straight into the compact forms' parts, rows at a time.

llama.cpp stores a matrix row by row, each row a run of blocks along the input. Three block
types are 4-bit values in groups of 32 with a scale and an offset each, which is exactly the int4
form (weights.py: W = q · scale + min, q in 0..15):
- Q4_0: 32 values, an fp16 `d`; W = d · (q − 8), so scale d and min −8d;
- Q4_1: 32 values, fp16 `d` and `m`; W = d · q + m;
- Q4_K: 256 values in 8 groups of 32, fp16 `d` and `dmin` and a 6-bit scale and min per
  group; W = (d · sc) · q − dmin · m.
Q8_0 (32 int8 values and an fp16 `d`) is exactly int8 with a scale per group of 32. Every
product above of an fp16 and a small integer is exact in float32, so the parts are bit for bit
what gguf's own dequantization computes. Other types (Q5_x, Q6_K, …) are dequantized by gguf,
a few rows at a time, and re-quantized to the nearest compact form.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import Q4_K, dequantize

Q = GGMLQuantizationType
EXACT_INT4 = frozenset({Q.Q4_0, Q.Q4_1, Q.Q4_K})
EXACT_INT8 = frozenset({Q.Q8_0})


def readable(qtype: Q) -> bool:
    """Whether gguf can dequantize `qtype` (it raises NotImplementedError for the rest)."""
    if qtype not in GGML_QUANT_SIZES:
        return False
    try:
        dequantize(np.zeros((1, GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8), qtype)
    except (NotImplementedError, ValueError):
        return False
    return True


def row_bytes(qtype: Q, columns: int) -> int:
    """Bytes of one row of `columns` values of `qtype`."""
    block, size = GGML_QUANT_SIZES[qtype]
    if columns % block:
        raise ValueError(f"{qtype.name} rows hold multiples of {block} values, not {columns}")
    return columns // block * size


def _fp16(raw: np.ndarray) -> np.ndarray:
    """Bytes [..., 2] as float32 [...]."""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0].astype(np.float32)


def int4_parts(raw: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of Q4_0/Q4_1/Q4_K blocks (uint8 [R, row bytes]) as q uint8 [R, K] (0..15) and
    scales, mins float32 [R, K/32], with W = q · scale + min exactly."""
    rows = raw.shape[0]
    block, size = GGML_QUANT_SIZES[qtype]
    blocks = raw.reshape(rows, -1, size)
    if qtype == Q.Q4_K:
        d, dmin = _fp16(blocks[..., 0:2]), _fp16(blocks[..., 2:4])  # [R, nb]
        sc, m = Q4_K.get_scale_min(np.ascontiguousarray(blocks[..., 4:16]).reshape(-1, 12))
        scales = d[..., None] * sc.reshape(rows, -1, 8).astype(np.float32)
        mins = -(dmin[..., None] * m.reshape(rows, -1, 8).astype(np.float32))
        # 32 bytes per pair of groups: low nibbles the first group, high nibbles the second.
        packed = blocks[..., 16:].reshape(rows, -1, 4, 1, 32)
        q = np.concatenate([packed & 0x0F, packed >> 4], axis=3)
        return q.reshape(rows, -1), scales.reshape(rows, -1), mins.reshape(rows, -1)
    if qtype not in (Q.Q4_0, Q.Q4_1):
        raise ValueError(f"{qtype.name} is not a 4-bit type of groups of 32")
    d = _fp16(blocks[..., 0:2])
    start = 2 if qtype == Q.Q4_0 else 4
    mins = -8 * d if qtype == Q.Q4_0 else _fp16(blocks[..., 2:4])
    # 16 bytes per group: low nibbles values 0..15, high nibbles 16..31.
    packed = blocks[..., start:].reshape(rows, -1, 1, block // 2)
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=2)
    return q.reshape(rows, -1), d, mins


def int8_parts(raw: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray]:
    """Rows of Q8_0 blocks as q int8 [R, K] and scales float32 [R, K/32], W = q · scale."""
    if qtype != Q.Q8_0:
        raise ValueError(f"{qtype.name} is not Q8_0")
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, GGML_QUANT_SIZES[qtype][1])
    q = np.ascontiguousarray(blocks[..., 2:]).view(np.int8)
    return q.reshape(rows, -1), _fp16(blocks[..., 0:2])


def float_rows(raw: np.ndarray, qtype: Q) -> np.ndarray:
    """Rows (uint8 [R, row bytes]) of any type gguf reads, as float32 [R, K] (F32: a view)."""
    return np.asarray(dequantize(raw, qtype), dtype=np.float32)
