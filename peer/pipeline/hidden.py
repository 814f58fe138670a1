"""Hidden states ⇄ `Hidden` frames: the one place where tensors meet the wire's raw bytes."""

from __future__ import annotations

import numpy as np
import torch

from ..model.devices import DTYPES
from ..wire import Hidden, WireDtype


def hidden_frame(session: str, position: int, tensor: torch.Tensor, dtype: WireDtype) -> Hidden:
    """Wrap a [n, H] tensor, converted to the wire dtype (no copy when it already is)."""
    wire = tensor.detach().to("cpu", DTYPES[dtype]).contiguous()
    # bfloat16 has no numpy dtype: view its bytes as int16 to hand them over.
    array = wire.view(torch.int16).numpy() if dtype == "bfloat16" else wire.numpy()
    return Hidden(session, position, dtype, (int(wire.shape[0]), int(wire.shape[1])), array.data.cast("B"))


def hidden_tensor(frame: Hidden) -> torch.Tensor:
    """The frame's hidden states as a [n, H] tensor (one copy: the frame bytes are read-only)."""
    if frame.dtype == "bfloat16":
        array = np.frombuffer(frame.data, dtype=np.int16)
        return torch.from_numpy(array.copy()).view(torch.bfloat16).reshape(frame.shape)
    array = np.frombuffer(frame.data, dtype=np.dtype(frame.dtype).newbyteorder("<"))
    # np.frombuffer over bytes is read-only; torch wants writable memory, so copy once here.
    return torch.from_numpy(array.copy()).reshape(frame.shape)
