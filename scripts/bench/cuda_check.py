"""The batched engine on a CUDA device: passes equal single steps, tokens equal transformers, and
what batching buys there. For a GPU machine (needs only torch, transformers, aiohttp, msgpack,
numpy, psutil, safetensors, tqdm: no model file; it builds a random Llama of the size asked).

  python scripts/bench/cuda_check.py [--hidden 2048 --layers 16] [--dtype bfloat16]

1. A random Llama (transformers builds it offline) is saved as a Hugging Face directory.
2. Two stages on the GPU in this process (real sockets, `LocalCluster`), 8 sessions at once:
   greedy tokens must equal transformers' `generate` on the same GPU for each prompt alone.
3. A whole-model shard: decode passes of 1..32 sessions, time per pass and tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import torch
from edgeshard.peer.model.files import HuggingFaceModel
from edgeshard.peer.model.shard import Shard, Step, even_split, unit_count
from edgeshard.peer.pipeline.local import LocalCluster
from edgeshard.peer.wire import SamplingParams
from transformers import LlamaConfig, LlamaForCausalLM


def build(directory: Path, hidden: int, layers: int) -> LlamaConfig:
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(7)
    LlamaForCausalLM(config).save_pretrained(str(directory))
    return config


def reference(directory: Path, prompts: list[list[int]], tokens: int, device: str) -> list[list[int]]:
    model = LlamaForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    torch.nn.Module.to(model, torch.device(device))
    model.train(False)
    answers = []
    with torch.inference_mode():
        for ids in prompts:
            output = model.generate(
                torch.tensor([ids], device=device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
            )
            answers.append(output[0, len(ids) :].tolist())
    return answers


async def pipeline_tokens(
    source: HuggingFaceModel, prompts: list[list[int]], tokens: int, device: str
) -> list[list[int]]:
    ranges = even_split(unit_count(source.config), 2)
    async with LocalCluster("random", ranges, source=source, device=device) as cluster:

        async def one(ids: list[int]) -> list[int]:
            return [t async for t in cluster.origin.generate(cluster.route, ids, SamplingParams(), tokens)]

        results = await asyncio.gather(*(one(ids) for ids in prompts))
        mean = [s.batcher.steps / max(1, s.batcher.passes) for s in cluster._stages]
        print(f"pipeline: {len(prompts)} sessions at once, mean batch per pass {[round(m, 2) for m in mean]}")
        return list(results)


def batch_speed(source: HuggingFaceModel, device: str, dtype: torch.dtype) -> None:
    shard = Shard(source, 0, unit_count(source.config), device=device, dtype=dtype, max_sessions=64)
    print(f"decode passes, whole model on {device} {dtype}:")
    base = float("nan")
    for batch in (1, 1, 2, 4, 8, 16, 32):  # the first round of one session warms the kernels up
        sessions = [f"s{batch}-{i}" for i in range(batch)]
        shard.run_batch([Step(s, 0, torch.arange(1, 65)) for s in sessions])
        times = []
        for step in range(12):
            started = time.perf_counter()
            shard.run_batch([Step(s, 64 + step, torch.tensor([5])) for s in sessions])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        best = min(times[2:])
        base = best if batch == 1 else base  # the second round of one is the warm one
        print(
            f"  {batch:3d} sessions: {best * 1000:7.2f} ms/pass  {batch / best:8.1f} tokens/s  {best / base:.2f}x one"
        )
        for s in sessions:
            shard.close(s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = args.device
    print(torch.__version__, torch.cuda.get_device_name(0) if device.startswith("cuda") else device)
    directory = Path(tempfile.mkdtemp(prefix="edgeshard-cuda-"))
    build(directory, args.hidden, args.layers)
    source = HuggingFaceModel(directory, directory / "cache")
    prompts = [[1, *range(10 + i, 30 + 3 * i)] for i in range(8)]
    expected = reference(directory, prompts, args.tokens, device)
    got = asyncio.run(pipeline_tokens(source, prompts, args.tokens, device))
    same = [g == e for g, e in zip(got, expected, strict=True)]
    print(f"greedy tokens equal transformers on {device} (float32, 2 stages, 8 sessions at once): {same}")
    batch_speed(source, device, getattr(torch, args.dtype))
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
