"""Weight forms (`scripts/bench-engine`, issue 12): speed, memory, load time and accuracy of each
form in FORMS against transformers' float32, measured in one run, interleaved over rounds with
the best round kept. Imported by engine.py (this folder is on the path); asserts nothing.

Speed: one session through `Shard.run` and 8 sessions through `Shard.run_batch` on a one-stage
shard, against transformers' own `generate` of 1 prompt and its batched `generate` of 8
(prefill subtracted on both sides). Memory: a 3-stage split as stage processes (LocalCluster).
Accuracy: teacher-forced top-1 agreement with float32's own greedy continuation of varied chat
prompts (both fed the float32 tokens, so the steps stay aligned), and perplexity on TEXT.
On a CUDA device (`--device cuda`) the stage-process memory and load-time columns are skipped
(the stages there are CPU processes); torch's CUDA allocator counts are printed instead.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from edgeshard.peer.model.files import GGUFModel, default_model_path
from edgeshard.peer.model.options import FORMS, WeightForm
from edgeshard.peer.model.shard import Shard, Step, even_split, unit_count
from edgeshard.peer.model.text import prompt_ids
from edgeshard.peer.pipeline.local import LocalCluster
from edgeshard.peer.wire import SamplingParams

MESSAGES = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a bicycle stays upright while it moves.",
    "Write a long story about a lighthouse keeper and a storm.",
    "Describe the water cycle to a ten-year-old.",
    "What are the main causes of the French Revolution?",
    "Write a poem about autumn leaves in a city park.",
    "Give me a recipe for a simple vegetable soup, step by step.",
    "Explain what a prime number is and list a few examples.",
    "Write a letter to a friend about a trip to the mountains.",
    "How does a refrigerator keep food cold?",
    "Tell me about the history of the printing press.",
    "Write a story about an owl who cannot sleep at night.",
    "What should I pack for a week of camping in the forest?",
    "Describe how bees make honey.",
    "Write a dialogue between a clockmaker and her apprentice.",
    "Explain why the sky is blue and sunsets are red.",
]

TEXT = (
    "The history of the bicycle began in the early nineteenth century, when inventors in Europe "
    "tried to build a machine that a person could ride without a horse. The first designs had no "
    "pedals at all: the rider sat on a wooden frame between two wheels and pushed against the "
    "ground with both feet. Later models added pedals to the front wheel, which made that wheel "
    "very large, and riding them was difficult and often dangerous.\n\n"
    "By the end of the century, the safety bicycle had appeared. It had two wheels of the same "
    "size, a chain that drove the rear wheel, and air-filled rubber tyres that made the ride far "
    "more comfortable. Bicycles became cheap enough for workers to buy, and they changed daily "
    "life: people could travel to jobs further from home, visit nearby towns on a Sunday, and "
    "enjoy a new kind of freedom. Many of the roads that cars use today were first paved because "
    "cyclists asked for them."
)


# --- speed -------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (a CUDA timing must not stop at the launch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def transformers_decode_tps(model: Any, batch: list[list[int]], pad: int, tokens: int) -> float:
    """Decode tokens/s of transformers' generate over `batch` prompts (left-padded; one-token run
    subtracted, so the prefill is excluded)."""
    width = max(len(ids) for ids in batch)
    device = model.device
    inputs = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
    timings = []
    with torch.inference_mode():
        for new in (1, tokens):
            synchronize(device)
            started = time.perf_counter()
            model.generate(inputs, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            synchronize(device)
            timings.append(time.perf_counter() - started)
    return len(batch) * (tokens - 1) / (timings[1] - timings[0])


def shard_decode_tps(shard: Shard, batch: list[list[int]], tokens: int) -> float:
    """Greedy decode tokens/s of one shard holding every unit (time after the first token): one
    session through `run`, several through `run_batch`."""
    names = [f"speed{index}" for index in range(len(batch))]

    def step(steps: list[Step]) -> list[torch.Tensor]:
        if len(steps) == 1:
            return [shard.run(steps[0].session, steps[0].position, steps[0].inputs)]
        outputs = shard.run_batch(steps)
        assert all(isinstance(output, torch.Tensor) for output in outputs), outputs
        return [output for output in outputs if isinstance(output, torch.Tensor)]

    logits = step([Step(n, 0, torch.tensor(ids)) for n, ids in zip(names, batch, strict=True)])
    positions = [len(ids) for ids in batch]
    synchronize(shard.device)
    started = time.perf_counter()
    for _ in range(tokens - 1):
        logits = step([Step(n, p, out.argmax().reshape(1)) for n, p, out in zip(names, positions, logits, strict=True)])
        positions = [p + 1 for p in positions]
    synchronize(shard.device)
    elapsed = time.perf_counter() - started
    for name in names:
        shard.close(name)
    return len(batch) * (tokens - 1) / elapsed


# --- accuracy ----------------------------------------------------------------------------------


def teacher_forced(shard: Shard, sequences: list[list[int]], prefill: list[int]) -> list[list[torch.Tensor]]:
    """Per sequence, the log-probabilities after each prefix from `prefill` tokens on: one batched
    prefill, then one batched decode step per following token (the sequence's own tokens fed)."""
    names = [f"tf{index}" for index in range(len(sequences))]
    steps = [Step(n, 0, torch.tensor(s[:p])) for n, s, p in zip(names, sequences, prefill, strict=True)]
    results: list[list[torch.Tensor]] = [[] for _ in sequences]
    position = list(prefill)
    while steps:
        outputs = shard.run_batch(steps)
        following = []
        for step, output in zip(steps, outputs, strict=True):
            assert isinstance(output, torch.Tensor), output
            index = names.index(step.session)
            results[index].append(torch.log_softmax(output.float(), dim=-1))
            at = position[index]
            if at < len(sequences[index]) - 1:
                following.append(Step(step.session, at, torch.tensor([sequences[index][at]])))
                position[index] = at + 1
        steps = following
    for name in names:
        shard.close(name)
    return results


def reference_continuations(shard: Shard, prompts: list[list[int]], steps: int, stops: list[int]) -> list[list[int]]:
    """float32's greedy continuation of each prompt (batched), up to `steps` tokens or a stop token."""
    names = [f"ref{index}" for index in range(len(prompts))]
    outputs = shard.run_batch([Step(n, 0, torch.tensor(p)) for n, p in zip(names, prompts, strict=True)])
    continuations: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))
    for _ in range(steps):
        tokens = {}
        for index, output in zip(live, outputs, strict=True):
            assert isinstance(output, torch.Tensor)
            continuations[index].append(token := int(output.argmax()))
            if token not in stops:
                tokens[index] = token
        live = [index for index in live if index in tokens and len(continuations[index]) < steps]
        if not live:
            break
        at = [len(prompts[i]) + len(continuations[i]) - 1 for i in live]
        outputs = shard.run_batch([Step(names[i], p, torch.tensor([tokens[i]])) for i, p in zip(live, at, strict=True)])
    for name in names:
        shard.close(name)
    return continuations


def accuracy(
    shard: Shard, prompts: list[list[int]], continuations: list[list[int]], paragraphs: list[list[int]]
) -> tuple[list[int], float]:
    """Top-1 argmax at every teacher-forced step of the float32 continuations, and the perplexity
    of the paragraphs (each scored from its first token)."""
    sequences = [p + c for p, c in zip(prompts, continuations, strict=True)]
    # torch's int8/int4 kernels here cost as much per row at 8-16 rows as at 1: one at a time
    group = 1 if shard.form in ("int8", "int4") else len(sequences)
    forced = [
        rows
        for at in range(0, len(sequences), group)
        for rows in teacher_forced(shard, sequences[at : at + group], [len(p) for p in prompts[at : at + group]])
    ]
    argmax = [int(row.argmax()) for rows, c in zip(forced, continuations, strict=True) for row in rows[: len(c)]]
    scored = teacher_forced(shard, paragraphs, [1] * len(paragraphs))
    losses = [
        -float(row[ids[at]]) for ids, rows in zip(paragraphs, scored, strict=True) for at, row in enumerate(rows, 1)
    ]
    return argmax, math.exp(sum(losses) / len(losses))


# --- memory and load ---------------------------------------------------------------------------


async def stage_memory(source: GGUFModel, form: WeightForm, ids: list[int], stages: int = 3) -> list[dict[str, Any]]:
    """Each stage's /status (units, weight bytes, RSS) of a split into stage processes, after a
    few tokens (memory-mapped weights are resident only once a token has used them)."""
    ranges = even_split(unit_count(source.config), stages)
    async with LocalCluster("default", ranges, processes=True, weights=form) as cluster:
        async for _token in cluster.origin.generate(cluster.route, ids, SamplingParams(), 8):
            pass
        return await cluster.stage_status()


def load_times(form: WeightForm) -> tuple[float, float]:
    """Seconds to open the default model and hold every unit in `form`: cold (an empty cache dir),
    then cached (the same dir again)."""
    seconds = []
    with tempfile.TemporaryDirectory() as cache_root:
        for _ in range(2):
            started = time.perf_counter()
            source = GGUFModel(default_model_path(), Path(cache_root))
            Shard(source, 0, unit_count(source.config), weights=form)
            seconds.append(time.perf_counter() - started)
    return seconds[0], seconds[1]


# --- the tables --------------------------------------------------------------------------------


async def forms_tables(
    reference: Any, source: GGUFModel, forms: list[WeightForm], tokens: int, rounds: int, device: str = "cpu"
) -> None:
    """Measure every form on `device` and print the weight-forms and accuracy tables, and the goals
    (`reference`: transformers' float32 model, already on `device`)."""
    on_cpu, cuda = torch.device(device).type == "cpu", torch.device(device).type == "cuda"
    tokenizer = source.tokenizer()
    prompts = [prompt_ids(tokenizer, None, message) for message in MESSAGES]
    batch = prompts[:8]
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    total = unit_count(source.config)
    shards: dict[WeightForm, Shard] = {}
    skipped: dict[str, str] = {}
    allocated: dict[str, int] = {}  # cuda: bytes the allocator holds for each form's shard
    peak: dict[str, int] = {}  # cuda: the most allocated beyond that while 8 sessions decode
    for form in forms:
        before = torch.cuda.memory_allocated(device) if cuda else 0
        try:
            shards[form] = Shard(source, 0, total, device=device, weights=form)
            shards[form].run("probe", 0, torch.tensor(prompts[0][:4]))  # a form may raise only when run
            shards[form].close("probe")
            allocated[form] = torch.cuda.memory_allocated(device) - before if cuda else 0
        except Exception as error:  # a benchmark: report the form, go on with the others
            skipped[form] = f"{type(error).__name__}: {error}"
            shards.pop(form, None)
    best: dict[tuple[str, int], float] = {}
    if not on_cpu:  # the first kernels of each shape (CUDA context, library handles) out of the rounds
        for width in (1, 8):
            transformers_decode_tps(reference, batch[:width], pad, 4)
            for shard in shards.values():
                shard_decode_tps(shard, batch[:width], 4)
    for round_ in range(rounds):
        print(f"forms: speed, round {round_ + 1} of {rounds} ...", file=sys.stderr)
        for width in (1, 8):
            tps = transformers_decode_tps(reference, batch[:width], pad, tokens)
            best[("transformers", width)] = max(best.get(("transformers", width), 0.0), tps)
            for form, shard in shards.items():
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                    resident = torch.cuda.memory_allocated(device)
                tps = shard_decode_tps(shard, batch[:width], tokens)
                best[(form, width)] = max(best.get((form, width), 0.0), tps)
                if cuda and width == 8:
                    peak[form] = max(peak.get(form, 0), torch.cuda.max_memory_allocated(device) - resident)

    f32 = shards.get("float32") or Shard(source, 0, total, device=device)
    stops = [int(t) for t in ([source.config.eos_token_id] if isinstance(source.config.eos_token_id, int) else [])]
    steps = max(1, -(-1000 // len(prompts)) + 8)
    print("forms: accuracy ...", file=sys.stderr)
    continuations = reference_continuations(f32, prompts, steps, stops)
    expected = [token for c in continuations for token in c]
    paragraphs = [tokenizer.encode(part) for part in TEXT.split("\n\n")]
    agreement: dict[str, float] = {}
    perplexity: dict[str, float] = {}
    for form, shard in shards.items():
        got, perplexity[form] = accuracy(shard, prompts, continuations, paragraphs)
        agreement[form] = sum(a == b for a, b in zip(got, expected, strict=True)) / len(expected)

    memory: dict[str, list[dict[str, Any]]] = {}
    loads: dict[str, tuple[float, float]] = {}
    if on_cpu:  # the stage processes and load_times hold their shards on the CPU
        print("forms: memory of 3 stage processes, load times ...", file=sys.stderr)
        memory = {form: await stage_memory(source, form, prompts[0]) for form in shards}
        loads = {form: load_times(form) for form in shards}

    one, eight = best[("transformers", 1)], best[("transformers", 8)]
    print(
        f"\n## Weight forms, default model, {tokens} tokens, best of {rounds} rounds "
        f"({f'{torch.get_num_threads()} torch threads' if on_cpu else device_name(device)})\n"
    )
    print(
        "| form | 1 session tokens/s | vs transformers | 8 sessions tokens/s | vs transformers batch 8 "
        "| weights MB (1 stage) | 3 stages: weights MB | 3 stages: RSS MB | load cold s | load cached s "
        "| top-1 vs float32 |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|")
    print(f"| transformers float32 | {one:.1f} | 1.00× | {eight:.1f} | 1.00× | | | | | | |")
    for form, shard in shards.items():
        stages = memory.get(form, [])
        weights = " / ".join(f"{s['weight_bytes'] / 2**20:.0f}" for s in stages) or "–"
        rss = " / ".join(f"{s['rss_bytes'] / 2**20:.0f}" for s in stages) or "–"
        cold, cached = (f"{seconds:.1f}" for seconds in loads[form]) if form in loads else ("–", "–")
        a, b = best[(form, 1)], best[(form, 8)]
        print(
            f"| {form} | {a:.1f} | {a / one:.2f}× | {b:.1f} | {b / eight:.2f}× | {shard.weight_bytes() / 2**20:.0f} "
            f"| {weights} | {rss} | {cold} | {cached} | {agreement[form]:.1%} |"
        )
    for name, why in skipped.items():
        print(f"\nskipped {name}: raises on this device ({why})")
    if on_cpu:
        print(
            "\nRSS includes ~0.5 GB of torch and transformers per process; the first stage's embedding rows "
            "are memory-mapped, so only the rows looked up are resident."
        )
    else:
        print(f"\n3-stage memory and load times: not measured on {device} (those stage processes run on the CPU)")
    if cuda:
        print("\n| form | CUDA MB allocated by its shard | CUDA peak MB beyond that, 8 sessions decoding |")
        print("|---|---:|---:|")
        for form in shards:
            print(f"| {form} | {allocated[form] / 2**20:.0f} | {peak.get(form, 0) / 2**20:.0f} |")

    base = perplexity.get("float32")
    print(
        f"\n## Accuracy against float32: top-1 over {len(expected)} teacher-forced decode steps of "
        f"{len(prompts)} chat prompts; perplexity of a {sum(map(len, paragraphs))}-token English text\n"
    )
    print("| form | top-1 agreement | perplexity | change vs float32 |")
    print("|---|---:|---:|---:|")
    for form in shards:
        change = f"{perplexity[form] - base:+.2f} ({perplexity[form] / base - 1:+.1%})" if base else "–"
        print(f"| {form} | {agreement[form]:.1%} | {perplexity[form]:.2f} | {change} |")

    fast = [f for f in shards if best[(f, 1)] >= 2 * one and agreement[f] >= 0.98 and f not in ("float32",)]
    print(
        "\ngoal: one session ≥ 2× transformers float32 decode with a compact form whose top-1 agreement ≥ 98%: "
        + (
            f"met ({', '.join(f'{f} {best[(f, 1)] / one:.2f}×, {agreement[f]:.1%}' for f in fast)})"
            if fast
            else "not met"
        )
        + "; best: "
        + ", ".join(f"{f} {best[(f, 1)] / one:.2f}× at {agreement[f]:.1%}" for f in shards if f != "float32")
    )
    file_bytes = default_model_path().stat().st_size
    if "int4" in shards:
        held = shards["int4"].weight_bytes()
        print(
            "goal: resident weight memory within 1.3× of the GGUF file's bytes for the 4-bit form: "
            f"{'met' if held <= 1.3 * file_bytes else 'not met'} (int4 holds {held / 2**20:.0f} MB in one stage, "
            f"{held / file_bytes:.2f}× the file's {file_bytes / 2**20:.0f} MB"
            + (
                f"; the 3 stages together hold {sum(s['weight_bytes'] for s in memory['int4']) / 2**20:.0f} MB: "
                "the tied embedding/head is on both ends)"
                if "int4" in memory
                else ")"
            )
        )
    else:
        print("goal: resident weight memory within 1.3× of the GGUF file's bytes for the 4-bit form: not measured")


def device_name(device: str) -> str:
    """`cuda: NVIDIA H200`-style, for a table's heading."""
    return f"{device}: {torch.cuda.get_device_name(device)}" if torch.device(device).type == "cuda" else device


def form_list(text: str) -> list[WeightForm]:
    """`--forms` (comma-separated) as FORMS entries, float32 first (the reference)."""
    wanted = [name.strip() for name in text.split(",") if name.strip()] if text else list(FORMS)
    unknown = [name for name in wanted if name not in FORMS]
    if unknown:
        raise SystemExit(f"unknown forms {unknown}; choose from {', '.join(FORMS)}")
    return [form for form in FORMS if form in wanted or form == "float32"]
