"""A shard's prefix cache: the KV of finished sessions' token blocks, for the requests that
start with the same tokens (vLLM's automatic prefix caching, on this stage's layers only).

A block is `wire.PREFIX_BLOCK_TOKENS` positions. Its key is the chained hash of every token up
to and including the block (`wire.block_hashes`, seeded with the layout and the wire dtype),
which the origin computes: a stage after the first never sees tokens. Equal keys mean equal
KV, so a block many sessions share (one system prompt) is held once.

Blocks are taken out of a session's slot when the session closes (its origin names the blocks
it fed) and copied into a new session's slot when it opens with those keys; the pool's
attention never reads the store, so nothing else in the step changes. Least recently used out;
each chain is touched from its end to its start, so its last blocks go first and what remains
is always a prefix that can still match.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..wire import PREFIX_BLOCK_TOKENS
from .kvcache import KVPool


@dataclass
class PrefixCounts:
    """What the store did since the shard was built (blocks)."""

    matched: int = 0  # asked for at an open, and held
    missed: int = 0  # asked for at an open, not held (or after the first block not held)
    stored: int = 0
    evicted: int = 0


Block = tuple[torch.Tensor, ...]  # per plane of the pool (kvcache.py), the layers' [layers, kv_heads, B, width]


class PrefixStore:
    """At most `capacity` blocks of KV for `pool`'s layers, keyed by chained token hashes."""

    def __init__(self, pool: KVPool, capacity: int) -> None:
        self.pool = pool
        self.capacity = max(0, capacity)
        self.blocks: OrderedDict[bytes, Block] = OrderedDict()
        self.counts = PrefixCounts()

    def block_bytes(self) -> int:
        return PREFIX_BLOCK_TOKENS * self.pool.position_bytes()

    def match(self, keys: Sequence[bytes]) -> int:
        """How many of `keys`, from the first, this store holds (all of them on a shard
        without layers: it holds no KV to miss)."""
        if not self.pool.layers:
            return len(keys)
        held = 0
        while held < len(keys) and keys[held] in self.blocks:
            held += 1
        return held

    def take(self, keys: Sequence[bytes]) -> list[Block]:
        """The blocks of the longest run of `keys` held, from the first, made most recently
        used. Safe on the event loop while the compute thread works: dictionary reads and moves
        only (each atomic), and the tensors taken stay valid if they are evicted before `load`."""
        held = self.match(keys)
        self.counts.matched += held
        self.counts.missed += len(keys) - held
        if not self.pool.layers:
            return [()] * held
        taken = [self.blocks.get(key) for key in keys[:held]]
        self._touch(keys[:held])
        return [block for block in taken if block is not None]

    @torch.inference_mode()  # the pool's tensors are inference tensors
    def load(self, slot: int, blocks: Sequence[Block]) -> None:
        """Copy `blocks` (from `take`) into positions [0, n·B) of `slot` (on the compute thread)."""
        if not blocks or not self.pool.layers:
            return
        length = len(blocks) * PREFIX_BLOCK_TOKENS
        self.pool.reserve(length)
        for index, plane in enumerate(self.pool.planes):
            joined = torch.cat([block[index] for block in blocks], dim=2)  # [L, H, n·B, width]
            for layer, tensor in enumerate(plane):
                tensor[slot, :, :length] = joined[layer]

    @torch.inference_mode()
    def store(self, slot: int, keys: Sequence[bytes]) -> None:
        """Keep block i of `slot` under keys[i] for every key not held yet (positions
        [0, len(keys)·B) of the slot must hold those tokens' KV)."""
        if not keys or not self.pool.layers or not self.capacity:
            return
        block = PREFIX_BLOCK_TOKENS
        for index in range(len(keys) - 1, -1, -1):  # from the end: the chain's start is newest
            key = keys[index]
            if key in self.blocks:
                self.blocks.move_to_end(key)
                continue
            span = slice(index * block, (index + 1) * block)
            self.blocks[key] = tuple(torch.stack([t[slot, :, span] for t in plane]) for plane in self.pool.planes)
            self.counts.stored += 1
            while len(self.blocks) > self.capacity:
                self.blocks.popitem(last=False)
                self.counts.evicted += 1

    def clear(self) -> None:
        self.blocks.clear()

    def status(self) -> dict[str, int]:
        return {
            "blocks": len(self.blocks),
            "capacity_blocks": self.capacity,
            "block_tokens": PREFIX_BLOCK_TOKENS,
            "bytes": len(self.blocks) * self.block_bytes() if self.pool.layers else 0,
            "matched_blocks": self.counts.matched,
            "missed_blocks": self.counts.missed,
            "stored_blocks": self.counts.stored,
            "evicted_blocks": self.counts.evicted,
        }

    def _touch(self, keys: Sequence[bytes]) -> None:
        for key in reversed(keys):
            if key in self.blocks:  # evicted meanwhile by the compute thread: nothing to move
                self.blocks.move_to_end(key)
