"""A stored matrix a chunk of rows at a time: what the readers of model files (files.py) yield,
and the float32 copy of a tensor assembled from it without a whole-tensor temporary."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import ModelFileError
from .blocks import float_rows

CHUNK_VALUES = 1 << 20  # values per chunk of rows read and converted at once (4 MB as float32)


@dataclass(frozen=True)
class Rows:
    """Rows [start, start + len) of a matrix as stored: GGUF blocks (uint8 [R, row bytes]) of
    `qtype`, or float32 values [R, K] (qtype None)."""

    start: int
    data: np.ndarray
    qtype: Any  # gguf.GGMLQuantizationType | None


def chunk_rows(columns: int, multiple: int = 1) -> int:
    """Rows per chunk: about CHUNK_VALUES values, a multiple of `multiple` (whole heads)."""
    return max(1, CHUNK_VALUES // max(1, columns) // multiple) * multiple


def read_rows(path: Path, offset: int, rows: int, width: int, step: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, uint8 [count, width]) for each `step` rows of a matrix stored row after row
    from `offset`: plain reads, not a memory map, whose touched pages would count as ours."""
    with path.open("rb", buffering=0) as handle:
        for start in range(0, rows, step):
            raw = np.empty((min(step, rows - start), width), dtype=np.uint8)
            handle.seek(offset + start * width)
            if handle.readinto(raw.data.cast("B")) != raw.nbytes:
                raise ModelFileError(f"{path}: a tensor at byte {offset} is cut short")
            yield start, raw


class RowSource(Protocol):
    """A model file's tensors, read as chunks of rows."""

    def shape(self, name: str) -> tuple[int, ...]: ...

    def row_chunks(self, name: str) -> Iterator[Rows]: ...


def row_values(rows: Rows) -> np.ndarray:
    """A chunk's rows as float32 values."""
    return rows.data if rows.qtype is None else float_rows(rows.data, rows.qtype)


def matrix_shape(source: RowSource, name: str) -> tuple[int, int]:
    """(rows, columns) of a tensor; a vector is one row."""
    shape = source.shape(name)
    return (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])


def read_float(source: RowSource, name: str) -> torch.Tensor:
    """Tensor `name` as float32, in its own shape."""
    out = torch.empty(matrix_shape(source, name), dtype=torch.float32)
    for rows in source.row_chunks(name):
        out[rows.start : rows.start + rows.data.shape[0]] = torch.from_numpy(row_values(rows))
    return out.view(source.shape(name))
