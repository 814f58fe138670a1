"""A shard's KV cache: one preallocated pool of session slots per layer (gpt-fast's, vLLM's idea).

Each decoder layer holds keys and values as [slots, kv_heads, capacity, head_dim]: a session
owns one slot for its lifetime and writes position p of its keys at [slot, :, p]. A step
writes in place, so nothing is concatenated per step (transformers' `DynamicCache` grows every
layer's tensors by one `torch.cat` per step), and the decode steps of a pass attend to one view
of the pool (a slice of its slots and positions) in a single attention call per layer.

Capacity is shared by all slots and doubles when a session needs more, up to the shard's
context, so what is resident grows with the positions held, as it did with concatenated caches,
while the planner counts the whole context for every session.

The pool is made with `torch.zeros`, never `torch.empty`: decode rows of a pass attend over the
same key range under a length mask, and a masked position still enters the product with the
values as weight 0 times its value. Memory the allocator hands back may hold NaN bit patterns,
and 0 x NaN is NaN: one shorter session's output became NaN (greedy token 0 for ever, sampling
refused) whenever the pool grew into reused memory.
"""

from __future__ import annotations

import torch

FIRST_CAPACITY = 64  # positions: the pool starts small and doubles


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
    ) -> None:
        self.layers, self.limit = layers, limit
        self.shape = (slots, kv_heads, head_dim)
        self.dtype, self.device = dtype, device
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.free = list(range(slots - 1, -1, -1))  # popped from the end: lowest slot first

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
        slots, heads, dim = self.shape
        for tensors in (self.keys, self.values):
            for index, held in enumerate(tensors):
                grown = torch.zeros(slots, heads, capacity, dim, dtype=self.dtype, device=self.device)
                grown[:, :, : self.capacity] = held[:, :, : self.capacity]
                tensors[index] = grown
            if not tensors:
                shape = (slots, heads, capacity, dim)
                tensors.extend(torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers))
        self.capacity = capacity
