"""A shard's KV cache: one preallocated pool of session slots per layer (gpt-fast's, vLLM's idea).

Each decoder layer holds keys and values as [slots, kv_heads, capacity, head_dim]: a session
owns one slot for its lifetime and writes position p of its keys at [slot, :, p]. A step
writes in place, so nothing is concatenated per step (transformers' `DynamicCache` grows every
layer's tensors by one `torch.cat` per step), and the decode steps of a pass attend to one view
of the pool (a slice of its slots and positions) in a single attention call per layer.

Capacity is shared by all slots and doubles when a session needs more, up to the shard's
context, so what is resident grows with the positions held, as it did with concatenated caches,
while the planner counts the whole context for every session.

`--kv-cache int8` holds keys and values as int8 with a float32 scale and minimum per 32 values
of a head at a position (blocks of llama.cpp's q8_0 size; 1.25 bytes a value against 2 or 4),
quantized as they are written and read back into the compute dtype for each attention call:
the pool shrinks, each step pays a dequantization of the view it attends to. The minimum (255
levels over each group's range, not 254 over ± its largest magnitude) took top-1 agreement with
float KV from 98.7% to 99.2% on the embedded model, 1,199 positions teacher-forced
(scripts/bench/kv_int8.py).

The pool is made with `torch.zeros`, never `torch.empty`: decode rows of a pass attend over the
same key range under a length mask, and a masked position still enters the product with the
values as weight 0 times its value. Memory the allocator hands back may hold NaN bit patterns,
and 0 x NaN is NaN: one shorter session's output became NaN (greedy token 0 for ever, sampling
refused) whenever the pool grew into reused memory.
"""

from __future__ import annotations

import torch

from .options import KVForm

Where = tuple[int | slice | torch.Tensor, ...]  # an index of a pool tensor's [slots, kv_heads, capacity]

FIRST_CAPACITY = 64  # positions: the pool starts small and doubles
KV_GROUP = 32  # values per int8 scale and minimum (the size of llama.cpp's q8_0 block)


def kv_bytes_per_value(form: KVForm, dtype: torch.dtype) -> float:
    """Bytes one cached key or value element takes (the int8 form's scales included)."""
    if form == "int8":
        return 1 + 8 / KV_GROUP
    return float(torch.empty((), dtype=dtype).element_size())


class KVPool:
    """Keys and values of `slots` sessions for `layers` layers, positions [0, capacity)."""

    def __init__(
        self,
        layers: int,
        slots: int,
        kv_heads: int,
        head_dim: int,
        limit: int,
        dtype: torch.dtype,
        device: torch.device,
        form: KVForm = "float",
    ) -> None:
        self.layers, self.limit = layers, limit
        self.shape = (slots, kv_heads, head_dim)
        self.dtype, self.device, self.form = dtype, device, form
        self.group = KV_GROUP if head_dim % KV_GROUP == 0 else head_dim
        # Per plane, the layers' tensors [slots, kv_heads, capacity, width]: keys and values, and
        # under int8 their scales. Everything that copies the cache (prefix.py) goes plane by plane.
        self.widths: tuple[int, ...] = (head_dim, head_dim)
        self.dtypes: tuple[torch.dtype, ...] = (dtype, dtype)
        if form == "int8":
            groups = head_dim // self.group
            self.widths = (head_dim, head_dim, 2 * groups, 2 * groups)
            self.dtypes = (torch.int8, torch.int8, torch.float32, torch.float32)
        self.planes: list[list[torch.Tensor]] = [[] for _ in self.widths]
        self.capacity = 0
        self.free = list(range(slots - 1, -1, -1))  # popped from the end: lowest slot first

    def position_bytes(self) -> int:
        """What one position of one slot takes, all layers and planes (scales included)."""
        _slots, heads, _dim = self.shape
        widths = zip(self.widths, self.dtypes, strict=True)
        return self.layers * heads * sum(width * torch.empty((), dtype=dtype).element_size() for width, dtype in widths)

    def acquire(self) -> int:
        """A free slot (the lowest, so the sessions of a pass sit close together)."""
        return self.free.pop()

    def release(self, slot: int) -> None:
        self.free.append(slot)
        self.free.sort(reverse=True)

    def reserve(self, length: int) -> None:
        """Make room for `length` positions in every slot (doubling, at most `limit`)."""
        if length <= self.capacity:
            return
        capacity = max(FIRST_CAPACITY, self.capacity)
        while capacity < length:
            capacity *= 2
        capacity = min(capacity, self.limit)
        slots, heads, _dim = self.shape
        for plane, width, dtype in zip(self.planes, self.widths, self.dtypes, strict=True):
            shape = (slots, heads, capacity, width)
            for index, held in enumerate(plane):
                grown = torch.zeros(shape, dtype=dtype, device=self.device)
                grown[:, :, : self.capacity] = held[:, :, : self.capacity]
                plane[index] = grown
            if not plane:
                plane.extend(torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(self.layers))
        self.capacity = capacity

    def write(self, layer: int, where: Where, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keys and values [..., kv_heads?, D] into positions `where` of `layer` (an index of
        the [slots, kv_heads, capacity] dimensions, as torch indexing takes it)."""
        if self.form == "float":
            self.planes[0][layer][where] = keys
            self.planes[1][layer][where] = values
            return
        for plane, tensor in ((0, keys), (1, values)):
            quantized, scales = self._quantize(tensor)
            self.planes[plane][layer][where] = quantized
            self.planes[plane + 2][layer][where] = scales

    def read(self, layer: int, slots: slice, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of `slots`, positions [0, length), in the compute dtype
        [slots, kv_heads, length, D]: views of the pool, or under int8 dequantized copies."""
        keys = self.planes[0][layer][slots, :, :length]
        values = self.planes[1][layer][slots, :, :length]
        if self.form == "float":
            return keys, values
        key_scales = self.planes[2][layer][slots, :, :length]
        value_scales = self.planes[3][layer][slots, :, :length]
        return self._dequantize(keys, key_scales), self._dequantize(values, value_scales)

    def _quantize(self, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """int8 values and, per group, its scale and minimum side by side (x ≈ (q + 128)·s + m)."""
        grouped = tensor.float().reshape(*tensor.shape[:-1], -1, self.group)
        low, high = grouped.amin(-1), grouped.amax(-1)
        scales = (high - low) / 255.0
        levels = ((grouped - low[..., None]) / scales.clamp(min=1e-12)[..., None]).round().clamp(0, 255)
        return (levels - 128).to(torch.int8).flatten(-2), torch.stack((scales, low), -1).flatten(-2)

    def _dequantize(self, quantized: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        grouped = quantized.reshape(*quantized.shape[:-1], -1, self.group).to(self.dtype) + 128
        pairs = scales.reshape(*scales.shape[:-1], -1, 2).to(self.dtype)
        dequantized: torch.Tensor = grouped * pairs[..., :1] + pairs[..., 1:]
        return dequantized.flatten(-2)
