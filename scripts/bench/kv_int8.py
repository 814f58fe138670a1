"""`--kv-cache int8` against float KV on the same model, weights and text: teacher-forced.

One shard of the whole model per KV form; the text goes in 256-token chunks, and every
position's logits are kept (each position attends to the cache the chunks before it wrote, so
this is what decoding the text token by token computes). Prints the KV bytes per position of
each form, the top-1 agreement of int8 with float and the mean KL divergence of int8's
next-token distribution from float's, and each form's perplexity.

    python scripts/bench/kv_int8.py [--model default] [--weights float32] [--tokens 1200]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from edgeshard.peer.model.files import open_model
from edgeshard.peer.model.shard import Shard, Step, unit_count

CHUNK = 256


def logits_of(shard: Shard, ids: list[int]) -> torch.Tensor:
    """Every position's logits [T, V] of `ids` fed in chunks through `shard`."""
    rows = []
    for start in range(0, len(ids), CHUNK):
        part = torch.tensor(ids[start : start + CHUNK])
        (out,) = shard.run_batch([Step("text", start, part, every_row=True)])
        assert isinstance(out, torch.Tensor)
        rows.append(out.float())
    shard.close("text")
    return torch.cat(rows)


def kv_bytes_per_position(shard: Shard) -> float:
    """What one position of one session takes in the pool, all layers: measured from the pool's
    tensors (the planner's figure, `profile.kv_cache_bytes`, is checked against it in tests)."""
    pool = shard.pool
    total = sum(t.numel() * t.element_size() for plane in pool.planes for t in plane)
    return total / (pool.shape[0] * pool.capacity)


def compare(model: str, weights: str, tokens: int, text: str) -> dict[str, Any]:
    source = open_model(model)
    ids = [int(i) for i in source.tokenizer().encode(text)][:tokens]
    if len(ids) < tokens:
        raise SystemExit(f"the text has {len(ids)} tokens, fewer than {tokens}")
    end = unit_count(source.config)
    result: dict[str, Any] = {"model": model, "weights": weights, "positions": len(ids) - 1}
    logits = {}
    for form in ("float", "int8"):
        shard = Shard(source, 0, end, weights=weights, max_sessions=1, max_context=len(ids), kv_cache=form)  # type: ignore[arg-type]
        logits[form] = logits_of(shard, ids)[:-1]
        result[f"kv_bytes_per_position_{form}"] = kv_bytes_per_position(shard)
        logp = torch.log_softmax(logits[form], dim=-1)
        nll = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        result[f"perplexity_{form}"] = math.exp(nll.mean().item())
        del shard
    float_logp = torch.log_softmax(logits["float"], dim=-1)
    int8_logp = torch.log_softmax(logits["int8"], dim=-1)
    result["top1_agreement"] = (logits["float"].argmax(-1) == logits["int8"].argmax(-1)).float().mean().item()
    result["mean_kl"] = (float_logp.exp() * (float_logp - int8_logp)).sum(-1).mean().item()
    result["kv_bytes_ratio"] = result["kv_bytes_per_position_int8"] / result["kv_bytes_per_position_float"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--weights", default="float32", help="the weight form both runs hold")
    parser.add_argument("--tokens", type=int, default=1200)
    parser.add_argument("--text-file", default=str(Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md"))
    args = parser.parse_args()
    result = compare(args.model, args.weights, args.tokens, Path(args.text_file).read_text())
    print(json.dumps(result))
    print(
        f"{args.weights} weights, {result['positions']} positions teacher-forced: KV "
        f"{result['kv_bytes_per_position_int8']:.0f} B/position in int8 against "
        f"{result['kv_bytes_per_position_float']:.0f} in float ({result['kv_bytes_ratio']:.2f}x); "
        f"top-1 agreement {result['top1_agreement'] * 100:.2f}%, mean KL {result['mean_kl']:.5f}; "
        f"perplexity {result['perplexity_int8']:.3f} against {result['perplexity_float']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
