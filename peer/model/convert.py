"""A stored matrix into the form a stage holds, a chunk of rows at a time.

The result is allocated once at its final size and filled chunk by chunk, so a load's peak is
the tensor as held plus one chunk's float32 (`rows.CHUNK_VALUES`), never a float32 copy of
the whole tensor. Blocks the held form can take exactly are taken as they are (blocks.py);
any other rows are dequantized and quantized to the nearest compact values.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .blocks import EXACT_INT4, EXACT_INT8, int4_parts, int8_parts
from .files import ModelSource
from .options import WeightForm
from .rows import matrix_shape, row_values
from .weights import (
    GROUP,
    Compact,
    Int4Weight,
    Int8Weight,
    Target,
    from_tensors,
    is_quantized,
    quantize_int4,
    quantize_int8,
)


def table_target(source: ModelSource, name: str, form: WeightForm) -> Target | None:
    """The form of an embedding table (and of the int4 head's exact rows) under `form`: float
    under a float form; under int4 the file's own int4 groups when it has them; else int8 with
    a scale per group of 32."""
    if not is_quantized(form):
        return None
    return "int4" if form == "int4" and source.stored_type(name) in EXACT_INT4 else "int8g"


def read_compact(source: ModelSource, name: str, target: Target) -> Compact:
    """Matrix `name` in the compact form `target` (int4; int8 with a scale per row; int8g with
    a scale per group of 32)."""
    rows, columns = matrix_shape(source, name)
    groups = columns // GROUP
    if target == "int4":
        nibbles = torch.empty(rows, columns // 2, dtype=torch.uint8)
        scales, mins = torch.empty(rows, groups), torch.empty(rows, groups)
        for chunk in source.row_chunks(name):
            span = slice(chunk.start, chunk.start + chunk.data.shape[0])
            if chunk.qtype in EXACT_INT4:
                q, scale, low = (torch.from_numpy(a) for a in int4_parts(chunk.data, chunk.qtype))
                part = Int4Weight((q[:, 0::2] | (q[:, 1::2] << 4)), scale, low)
            else:
                part = quantize_int4(torch.from_numpy(row_values(chunk)))
            nibbles[span], scales[span], mins[span] = part.nibbles, part.scales, part.mins
        return Int4Weight(nibbles, scales, mins)
    grouped = target == "int8g"
    q8 = torch.empty(rows, columns, dtype=torch.int8)
    scales8 = torch.empty(rows, groups) if grouped else torch.empty(rows)
    for chunk in source.row_chunks(name):
        span = slice(chunk.start, chunk.start + chunk.data.shape[0])
        if grouped and chunk.qtype in EXACT_INT8:
            values, steps = int8_parts(chunk.data, chunk.qtype)
            q8[span], scales8[span] = torch.from_numpy(values), torch.from_numpy(steps)
        else:
            part8 = quantize_int8(torch.from_numpy(row_values(chunk)), grouped=grouped)
            q8[span], scales8[span] = part8.q, part8.scales
    return Int8Weight(q8, scales8)


# The compact cache's layout; a new one (int4 keeps minimums since v2) leaves old files unread.
COMPACT_CACHE = "compact-v2"


def compact_cache(source: ModelSource, target: Target) -> Path:
    """Where `source`'s values in `target` are cached."""
    return source.cache_dir / f"{COMPACT_CACHE}-{target}"


def load_weight(source: ModelSource, name: str, target: WeightForm | Target | None) -> torch.Tensor | Compact:
    """Tensor `name` as a stage holds it: float (target None), or in the compact form `target`
    (read from the source's disk cache, else converted and cached there)."""
    if target not in ("int8", "int4", "int8g"):
        return source.tensor(name)
    cached = compact_cache(source, target) / f"{name}.safetensors"
    if cached.exists():
        with safe_open(str(cached), framework="pt") as handle:
            return from_tensors({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118
    value = read_compact(source, name, target)
    cached.parent.mkdir(parents=True, exist_ok=True)
    temporary = cached.with_suffix(f".{os.getpid()}.tmp")
    save_file(value.tensors(), str(temporary))
    os.replace(temporary, cached)
    return value
