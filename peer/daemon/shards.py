"""Building the shard a plan gives this peer (on the stage's worker thread) and saying so."""

from __future__ import annotations

from ..model.files import ModelSource
from ..model.options import WeightForm
from ..model.shard import Shard
from .config import PeerConfig


def build_shard(
    source: ModelSource, config: PeerConfig, device: str, form: WeightForm, start: int, end: int, previous: Shard | None
) -> Shard:
    """Units [start, end) of the model, taking over the tensors `previous` already holds."""
    return Shard(
        source,
        start,
        end,
        device=device,
        weights=form,
        max_sessions=config.sessions,
        max_context=config.context,
        prefix_tokens=config.prefix_cache,
        kv_cache=config.kv_cache,
        slowdown=config.emulate_slowdown,
        reuse=previous,
    )


def loaded_line(shard: Shard, seconds: float) -> str:
    """The log line of a finished load."""
    return (
        f"loaded units [{shard.start}, {shard.end}) in {seconds:.2f} s "
        f"({shard.reused_tensors} tensors taken over from the previous shard), {shard.weight_bytes() / 1e6:.0f} MB"
    )
