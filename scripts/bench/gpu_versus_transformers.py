"""Decode speed on a GPU, one session and 8 sessions a pass: our whole-model shard (eager and
compiled) against transformers' batched `generate` on the same device, the same random weights
and the same dtype. No model file: random Llamas of the embedded model's shape and of
Llama-3.2-1B's (vocabulary cut to 32k) are built on the device (`scripts/gpu-check engine`).

  python scripts/bench/gpu_versus_transformers.py [--device cuda] [--shapes smollm2,1b]
      [--dtype bfloat16] [--tokens 64] [--rounds 3]

Every figure is decode tokens/s over `--tokens` steps after a 32-token prompt. The three run in
turn, round after round (a first round warms the kernels up and compiles), so a drift of the
shared machine falls on all of them; a figure is the median of its rounds, a ratio the median of
the rounds' ratios to transformers'.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from edgeshard.peer.model.files import HuggingFaceModel
from edgeshard.peer.model.shard import Shard, Step, unit_count
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {  # hidden, layers, heads, kv heads, MLP, vocabulary
    "smollm2": (576, 30, 9, 3, 1536, 49152),
    "1b": (2048, 16, 32, 8, 8192, 32000),
}
PROMPT = 32


def build(directory: Path, shape: str, dtype: torch.dtype, device: str) -> None:
    hidden, layers, heads, kv_heads, mlp, vocab = SHAPES[shape]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(11)
    with torch.device(device):  # random init on the GPU: seconds, not a minute on the CPU
        model = torch.nn.Module.to(LlamaForCausalLM(config), dtype)  # (transformers types .to for devices)
    model.save_pretrained(str(directory))


def prompts(batch: int) -> torch.Tensor:
    return torch.stack([torch.arange(3 + i, 3 + i + PROMPT) for i in range(batch)])


Timer = Callable[[], float]  # one round: the seconds of `tokens` decode steps


def transformers_timer(directory: Path, dtype: torch.dtype, device: str, batch: int, tokens: int) -> Timer:
    model = LlamaForCausalLM.from_pretrained(str(directory), dtype=dtype)
    torch.nn.Module.to(model, torch.device(device))
    model.train(False)
    ids = prompts(batch).to(device)

    def generate(new: int) -> float:
        torch.cuda.synchronize() if device.startswith("cuda") else None
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )
        torch.cuda.synchronize() if device.startswith("cuda") else None
        return time.perf_counter() - started

    # decode alone: a run of 1 + tokens new tokens less a run of 1 (the prefill and first token)
    return lambda: generate(1 + tokens) - generate(1)


def our_timer(
    source: HuggingFaceModel, dtype: torch.dtype, device: str, batch: int, tokens: int, compile_step: bool
) -> Timer:
    shard = Shard(
        source, 0, unit_count(source.config), device=device, dtype=dtype, max_sessions=16, compile_step=compile_step
    )
    ids = prompts(batch)
    count = 0

    def decode() -> float:
        nonlocal count
        count += 1
        sessions = [f"r{count}-{i}" for i in range(batch)]
        outputs = shard.run_batch([Step(s, 0, ids[i]) for i, s in enumerate(sessions)])
        started = time.perf_counter()
        for step in range(tokens):
            picked = [torch.tensor([int(o.argmax())]) for o in outputs]  # type: ignore[union-attr]
            outputs = shard.run_batch([Step(s, PROMPT + step, picked[i]) for i, s in enumerate(sessions)])
        seconds = time.perf_counter() - started
        for s in sessions:
            shard.close(s)
        return seconds

    return decode


def interleaved(timers: list[Timer], rounds: int) -> list[list[float]]:
    """Each timer's seconds per round, all of them in turn every round, after a warm-up round."""
    for timer in timers:
        timer()
    seconds: list[list[float]] = [[] for _ in timers]
    for _ in range(rounds):
        for timer, times in zip(timers, seconds, strict=True):
            times.append(timer())
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", default="smollm2,1b")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    dtype, device = getattr(torch, args.dtype), args.device
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else device
    print(f"torch {torch.__version__} on {name}, {args.dtype}, {args.tokens} decode tokens, median of {args.rounds}")
    print("| shape | sessions | transformers tokens/s | ours eager | ratio | ours compiled | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for shape in args.shapes.split(","):
        directory = Path(tempfile.mkdtemp(prefix=f"edgeshard-{shape}-"))
        build(directory, shape, dtype, device)
        source = HuggingFaceModel(directory, directory / "cache")
        for batch in (int(b) for b in args.batches.split(",")):
            timers = [
                transformers_timer(directory, dtype, device, batch, args.tokens),
                our_timer(source, dtype, device, batch, args.tokens, compile_step=False),
                our_timer(source, dtype, device, batch, args.tokens, compile_step=True),
            ]
            theirs, eager, fused = interleaved(timers, args.rounds)
            speed = [batch * args.tokens / statistics.median(times) for times in (theirs, eager, fused)]
            ratios = [statistics.median(t / o for t, o in zip(theirs, ours, strict=True)) for ours in (eager, fused)]
            print(
                f"| {shape} | {batch} | {speed[0]:.1f} | {speed[1]:.1f} | {ratios[0]:.2f}x "
                f"| {speed[2]:.1f} | {ratios[1]:.2f}x |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
