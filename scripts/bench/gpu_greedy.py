"""Greedy decoding of the default model on one device (`scripts/gpu-check`): our whole-model
Shard against transformers' `generate`, float32 against float32 (the tokens should be identical)
and bfloat16 against bfloat16 (agreement reported: rounding may flip a near tie, and greedy
decoding diverges from there on).

  python scripts/bench/gpu_greedy.py [--device cuda] [--tokens 24]

Exit status 1 if the float32 tokens differ anywhere; the bfloat16 figures only inform.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from edgeshard.peer.model.files import GGUFModel, default_model_path, open_model
from edgeshard.peer.model.options import WeightForm
from edgeshard.peer.model.shard import Shard, unit_count
from edgeshard.peer.model.text import prompt_ids

MESSAGES = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a bicycle stays upright while it moves.",
    "What are the main causes of the French Revolution?",
]


def ours(shard: Shard, ids: list[int], tokens: int) -> list[int]:
    """Greedy tokens of one session through `Shard.run` (no stop token: `tokens` of them)."""
    logits = shard.run("greedy", 0, torch.tensor(ids))
    out: list[int] = []
    for step in range(tokens):
        out.append(int(logits.argmax()))
        if step + 1 < tokens:
            logits = shard.run("greedy", len(ids) + step, torch.tensor([out[-1]]))
    shard.close("greedy")
    return out


def theirs(model: Any, ids: list[int], tokens: int) -> list[int]:
    """Greedy tokens of transformers' `generate` (it may stop early at an end-of-sequence token)."""
    inputs = torch.tensor([ids], device=model.device)
    with torch.inference_mode():
        output = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=tokens, do_sample=False)
    return [int(token) for token in output[0, len(ids) :].tolist()]


def compare(source: GGUFModel, form: WeightForm, dtype: torch.dtype, device: str, tokens: int) -> bool:
    """Print, per prompt, both token lists' agreement; True when every list is identical."""
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    torch.nn.Module.to(model, torch.device(device))
    shard = Shard(source, 0, unit_count(source.config), device=device, weights=form)
    print(f"{form}: transformers and our shard loaded on {device} in {time.perf_counter() - started:.1f} s")
    tokenizer = source.tokenizer()
    same = equal = total = 0
    for message in MESSAGES:
        ids = prompt_ids(tokenizer, None, message)
        expected = theirs(model, ids, tokens)
        got = ours(shard, ids, tokens)[: len(expected)]  # transformers stops at an end token
        matches = [a == b for a, b in zip(got, expected, strict=True)]
        prefix = matches.index(False) if False in matches else len(matches)
        same += got == expected
        equal += sum(matches)
        total += len(matches)
        print(f"  {message[:40]!r}: identical {got == expected}, first {prefix} of {len(matches)} equal")
        if got != expected:
            print(f"    ours:         {tokenizer.decode(got)!r}\n    transformers: {tokenizer.decode(expected)!r}")
    print(
        f"{form}: {same} of {len(MESSAGES)} token lists identical to transformers {form}; "
        f"agreement {equal / max(1, total):.1%} of {total} positions"
    )
    del model, shard
    return same == len(MESSAGES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()
    source = open_model("default")
    assert isinstance(source, GGUFModel)
    identical = compare(source, "float32", torch.float32, args.device, args.tokens)
    compare(source, "bfloat16", torch.bfloat16, args.device, args.tokens)
    print(f"float32 greedy tokens identical to transformers on {args.device}: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
