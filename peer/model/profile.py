"""What this device can do for this model: per-unit times (measured), unit sizes, memory budget.

The planner needs, per device, the decode time of every unit and the memory it may use
(docs/ARCHITECTURE.md, "The cost model"). Times are measured here, not declared: a short profile at start runs
the embedding, one decoder layer and the head through a real `Shard` (all decoder layers of a
Llama have one shape, so one stands for all) and keeps the fastest of a few decode steps (the
device's own cost; slower steps are other processes competing for it at that moment). The
result is cached per (model, device, dtype, threads, slowdown), so a restart costs nothing and
a peer republishes the same figures, which keeps the cluster's plan stable.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil
import torch
from edgeshard.solver import Unit
from transformers import PretrainedConfig

from .batches import BATCHES, batch_factor
from .compiled import compiles, process_mode
from .devices import default_form, resolve_form
from .families import attention_shape
from .files import ModelSource, atomic_write
from .kvcache import kv_bytes_per_value
from .options import KVForm, WeightForm
from .rows import CHUNK_VALUES
from .shard import Shard, Step, unit_count
from .weights import compute_dtype

log = logging.getLogger(__name__)

# Part of every cached profile's key: bump it whenever the stage's step gets faster or slower (5:
# the KV pool, fused projections and one compute thread per process; 6: a warm-up pass before
# the timed ones, and compiled steps keyed apart), or old caches keep planning with the old speed.
PROFILE_VERSION = 7  # 7: the cost of a pass after waiting (pass_ms)
PROMPT_TOKENS = 32
DECODE_STEPS = 8
WAKE_ROUNDS = 8  # pairs of passes, back to back and after IDLE_S, that pass_ms is read from
IDLE_S = 0.3  # what a stage in a pipeline waits between its passes, about (D = 4: 0.7 s)
RUNTIME_RESERVE_BYTES = 768 * 2**20  # the interpreter, torch and transformers themselves
WIRE_OVERHEAD_BYTES = 64  # frame header around a hidden state


@dataclass(frozen=True)
class Profile:
    """Measured milliseconds per unit: one decode step, and a PROMPT_TOKENS-token prefill;
    and how a decode pass's time grows with the sessions in it (`batch_scale[i]`: time of a
    pass of BATCHES[i] sessions over that of one, for a decoder layer)."""

    unit_ms: tuple[float, ...]
    prefill_ms: tuple[float, ...]
    device: str
    dtype: str
    threads: int
    slowdown: float
    batch_scale: tuple[float, ...] = ()
    form: WeightForm = "float32"  # how the units' weights were held (model/weights.py)
    weight_bytes: tuple[int, ...] = ()  # per unit, the bytes its weights take in that form
    pass_ms: float = 0.0  # what a pass costs beyond its units after the stage waited (_pass_ms)


def unit_sizes(
    config: PretrainedConfig, dtype: torch.dtype, context: int, sessions: int, cached: int = 0, kv: KVForm = "float"
) -> list[Unit]:
    """The model's units with their memory (weights + KV cache at `context` × `sessions`, and
    `cached` positions of prefix cache) and the bytes each sends on per decoded token (float32
    hidden state; the head sends a token id)."""
    size = torch.empty((), dtype=dtype).element_size()
    hidden, inter = int(config.hidden_size), int(config.intermediate_size)
    heads, kv_heads, head_dim = attention_shape(config)
    matrix = int(config.vocab_size) * hidden * size
    layer = (hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * inter + 2 * hidden) * size
    kv_cache = kv_cache_bytes(config, dtype, context, sessions, cached, kv)
    hop = hidden * 4 + WIRE_OVERHEAD_BYTES
    # A tied head still needs the embedding matrix on the head's stage (counted in both units;
    # only a one-stage plan holds it once, so this errs on the safe side).
    units = [Unit("embed", matrix, hop)]
    units += [Unit(f"layer{i}", layer + kv_cache, hop) for i in range(int(config.num_hidden_layers))]
    units.append(Unit("head", matrix + hidden * size, 16))
    return units


def kv_cache_bytes(
    config: PretrainedConfig, dtype: torch.dtype, context: int, sessions: int, cached: int = 0, kv: KVForm = "float"
) -> int:
    """One decoder layer's KV caches: `sessions` sessions of `context` positions, and `cached`
    positions of prefix cache, in the KV form `kv`."""
    _heads, kv_heads, head_dim = attention_shape(config)
    return int(2 * kv_heads * head_dim * (context * sessions + cached) * kv_bytes_per_value(kv, dtype))


def device_unit_bytes(
    profile: Profile, config: PretrainedConfig, context: int, sessions: int, cached: int = 0, kv: KVForm = "float"
) -> tuple[int, ...]:
    """Memory per unit on this device when its weights take a compact form (or its KV cache
    int8): the weights as the profile weighed them, plus each layer's KV caches. () for float32
    weights and KV (the model's sizes)."""
    if not profile.weight_bytes or (profile.form == "float32" and kv == "float"):
        return ()
    cache = kv_cache_bytes(config, compute_dtype(profile.form), context, sessions, cached, kv)
    embed, *layers, head = profile.weight_bytes
    return (embed, *[weights + cache for weights in layers], head)


def load_headroom(profiles: Sequence[Profile]) -> int:
    """Bytes a cold load needs beyond what the stage then holds: about one fused matrix twice
    (docs/ARCHITECTURE.md, Loading), counted as two of the largest layer's weights in the
    largest form offered, plus two chunks of rows in float32."""
    layers = [size for profile in profiles for size in profile.weight_bytes[1:-1]]
    return 2 * max(layers, default=0) + 2 * 4 * CHUNK_VALUES


def memory_budget(device: str, max_memory: int | None, headroom: int = 0) -> int:
    """Bytes this peer may give to units: free memory now (GPU memory on a GPU) less a reserve
    for the runtime and the `headroom` a first load needs, capped by --max-memory. Taken once
    at start, so the figure is stable."""
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        budget = int(free * 0.9) - headroom
    else:
        budget = int(psutil.virtual_memory().available * 0.9) - RUNTIME_RESERVE_BYTES - headroom
    budget = max(budget, 0)
    return min(budget, max_memory) if max_memory is not None else budget


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _time_unit(shard: Shard, first: torch.Tensor, steps: torch.Tensor, device: str) -> tuple[float, float]:
    """(fastest decode ms, prefill ms) of one shard, after a pass of each kind that warms up
    (and, for a compiled step, compiles: seconds of work that serving pays once, not per token)."""
    shard.run("warm-up", 0, first)
    shard.run("warm-up", first.shape[0], steps[:1])
    shard.close("warm-up")
    started = time.perf_counter()
    shard.run("profile", 0, first)
    _synchronize(device)
    prefill = (time.perf_counter() - started) * 1000
    timings = []
    for index in range(steps.shape[0]):
        started = time.perf_counter()
        shard.run("profile", PROMPT_TOKENS + index, steps[index : index + 1])
        _synchronize(device)
        timings.append((time.perf_counter() - started) * 1000)
    shard.close("profile")
    return min(timings[1:]), prefill  # the first step warms up


def measure(source: ModelSource, device: str, form: WeightForm, slowdown: float = 1.0) -> Profile:
    """Time the embedding, one decoder layer and the head on this device, weights in `form`;
    and weigh what each holds. An emulated `slowdown` (the testbed's) multiplies the times
    measured at full speed, as the shard's stretch does every pass, so a host emulating a device
    10x slower profiles as fast as any other (the batch curve, a ratio, is the same)."""
    config = source.config
    total = unit_count(config)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(config.vocab_size), (PROMPT_TOKENS + DECODE_STEPS,), generator=generator)
    hidden = torch.randn(PROMPT_TOKENS + DECODE_STEPS, int(config.hidden_size), generator=generator) * 0.1
    measured, weighed = [], []
    for start, inputs in ((0, ids), (1, hidden), (total - 1, hidden)):
        shard = Shard(source, start, start + 1, device=device, weights=form, max_sessions=1)
        measured.append(_time_unit(shard, inputs[:PROMPT_TOKENS], inputs[PROMPT_TOKENS:], device))
        weighed.append(shard.weight_bytes())
        del shard
    (embed, embed_p), (layer, layer_p), (head, head_p) = measured
    layers = total - 2
    return Profile(
        unit_ms=tuple(ms * slowdown for ms in (embed, *[layer] * layers, head)),
        prefill_ms=tuple(ms * slowdown for ms in (embed_p, *[layer_p] * layers, head_p)),
        device=device,
        dtype=str(compute_dtype(form)).removeprefix("torch."),
        threads=torch.get_num_threads(),
        slowdown=slowdown,
        batch_scale=_batch_scale(source, device, form, hidden),
        form=form,
        weight_bytes=(weighed[0], *[weighed[1]] * layers, weighed[2]),
        pass_ms=_pass_ms(source, device, form, hidden) * slowdown,
    )


def _pass_ms(source: ModelSource, device: str, form: WeightForm, hidden: torch.Tensor) -> float:
    """What a decode pass costs beyond its units when the stage waited IDLE_S for it, as every
    stage of a pipeline waits while the others compute: the compute threads have gone to sleep
    and must wake. Back-to-back passes (what unit times are read from) never pay it. Measured on
    this machine, a one-layer pass: 0.8 ms back to back, 7-8 ms (median) after 0.1-0.7 s with
    torch's two OpenMP threads (docs/ARCHITECTURE.md, the cost model). Pairs alternate, after a
    warm-up pass, so a burst of other load weighs on both sides alike. The waits' mean without
    the slowest one (what a stage pays on average: the cost comes in bursts, 1.6 to 8.9 ms in
    three profiles of one minute here; one stall of another kind is not it) less the
    back-to-back median, never below 0."""
    shard = Shard(source, 1, 2, device=device, weights=form, max_sessions=1)
    shard.run("wake", 0, hidden[:PROMPT_TOKENS])
    row = hidden[PROMPT_TOKENS : PROMPT_TOKENS + 1]
    shard.run("wake", PROMPT_TOKENS, row)  # warm-up
    position = PROMPT_TOKENS + 1
    back: list[float] = []
    waited: list[float] = []
    for _ in range(WAKE_ROUNDS):
        for idle, timings in ((0.0, back), (IDLE_S, waited)):
            time.sleep(idle)
            started = time.perf_counter()
            shard.run("wake", position, row)
            _synchronize(device)
            timings.append((time.perf_counter() - started) * 1000)
            position += 1
    usual = sorted(waited)[:-1]
    return round(max(0.0, statistics.mean(usual) - statistics.median(back)), 3)


def _batch_scale(source: ModelSource, device: str, form: WeightForm, hidden: torch.Tensor) -> tuple[float, ...]:
    """Decode-pass time of one decoder layer for each of BATCHES sessions, over one session's.

    The batch sizes take turns, round after round, and each keeps its fastest pass, so a burst
    of competing load (peers profiling side by side at start) cannot favour one size; a bigger
    batch never counts as cheaper than a smaller one."""
    shard = Shard(source, 1, 2, device=device, weights=form, max_sessions=sum(BATCHES))
    sessions = {batch: [f"b{batch}-{i}" for i in range(batch)] for batch in BATCHES}
    for names in sessions.values():
        shard.run_batch([Step(s, 0, hidden[:PROMPT_TOKENS]) for s in names])
    best = dict.fromkeys(BATCHES, float("inf"))
    for index in range(DECODE_STEPS):
        row = hidden[PROMPT_TOKENS + index : PROMPT_TOKENS + index + 1]
        for batch, names in sessions.items():
            started = time.perf_counter()
            shard.run_batch([Step(s, PROMPT_TOKENS + index, row) for s in names])
            _synchronize(device)
            if index > 0:  # the first round warms up
                best[batch] = min(best[batch], time.perf_counter() - started)
    scale, floor = [], 1.0
    for batch in BATCHES:
        floor = max(floor, best[batch] / best[1])
        scale.append(round(floor, 3))
    return tuple(scale)


# Forms by their top-1 agreement with float32 on the embedded model (README, "Weight forms"):
# where forms are about as fast, a peer offers the more accurate one first.
ACCURACY: tuple[WeightForm, ...] = ("float32", "float16", "int4", "bfloat16", "int8")
SPEED_MARGIN = 0.05  # a less accurate form must be this much faster to count as faster


def offered_forms(
    source: ModelSource,
    cache_dir: Path,
    device: str,
    choice: str,
    slowdown: float = 1.0,
    fresh: bool = False,
    batch: int = 1,
) -> list[Profile]:
    """The profiles of the forms a peer offers the planner (see `offer`), each profiled once
    and cached. `choice` is `auto`, a form, or forms joined by commas; `auto` means the device's
    compact default, float32, and int8 where the default is not already as small."""
    candidates: list[WeightForm]
    if choice == "auto":
        compact = default_form(device)
        candidates = [compact, "float32"]
        if compact not in ("int4", "int8"):
            candidates.append("int8")
    else:
        candidates = [resolve_form(name.strip(), device) for name in choice.split(",")]
    profiles = [load_or_measure(source, cache_dir, device, form, slowdown, fresh) for form in dict.fromkeys(candidates)]
    return offer(profiles, batch)


def offer(profiles: list[Profile], batch: int) -> list[Profile]:
    """What a peer publishes, its own form first: the most accurate form within SPEED_MARGIN of
    the fastest at `batch` sessions per pass; then, most accurate first, each form smaller than
    every one kept before it. Those are offered for memory (a plan takes one where the first
    does not fit), their times raised to at least the first form's, unit by unit, so that
    measurement noise never makes the planner trade accuracy for nothing (a plan picks the first
    of equally fast forms)."""
    ranked = sorted(profiles, key=lambda p: ACCURACY.index(p.form))
    fastest = min(per_token_ms(p, batch) for p in ranked)
    first = next(p for p in ranked if per_token_ms(p, batch) <= fastest * (1 + SPEED_MARGIN))
    kept = [first]
    for profile in ranked:
        if profile is first:
            continue
        if all(sum(profile.weight_bytes) < sum(k.weight_bytes) for k in kept):
            kept.append(no_faster_than(profile, first, batch))
        else:
            log.info("not offering %s weights: a more accurate form is as fast or as small", profile.form)
    return kept


def no_faster_than(profile: Profile, first: Profile, batch: int) -> Profile:
    """`profile` with each unit's time at `batch` raised to at least `first`'s."""
    ratio = batch_factor(first.batch_scale, batch) / batch_factor(profile.batch_scale, batch)
    unit_ms = tuple(max(own, theirs * ratio) for own, theirs in zip(profile.unit_ms, first.unit_ms, strict=True))
    return replace(profile, unit_ms=unit_ms)


def per_token_ms(profile: Profile, batch: int) -> float:
    """ms per token of the whole model on this device inside a pass of `batch` sessions."""
    return sum(profile.unit_ms) * batch_factor(profile.batch_scale, batch) / batch


def load_or_measure(
    source: ModelSource, cache_dir: Path, device: str, form: WeightForm, slowdown: float = 1.0, fresh: bool = False
) -> Profile:
    """The cached profile for this model and device, measured on first use (or when `fresh`: a
    profile taken while the device was busy with something else stays slow until re-measured)."""
    compiled = "-compiled" if compiles(process_mode(), form, device) else ""
    key = f"v{PROFILE_VERSION}-{device.replace(':', '_')}-{form}{compiled}-t{torch.get_num_threads()}-x{slowdown:g}"
    path = cache_dir / "profiles" / f"{source.fingerprint[:32]}-{key}.json"
    try:
        if fresh:
            raise OSError("re-measuring")
        stored = json.loads(path.read_text())
        profile = Profile(
            **{
                **stored,
                "unit_ms": tuple(stored["unit_ms"]),
                "prefill_ms": tuple(stored["prefill_ms"]),
                "batch_scale": tuple(stored["batch_scale"]),
                "weight_bytes": tuple(stored["weight_bytes"]),
            }
        )
        log.info("device profile from %s", path)
        return profile
    except (OSError, ValueError, TypeError, KeyError):
        pass
    started = time.perf_counter()
    profile = measure(source, device, form, slowdown)
    atomic_write(path, json.dumps(asdict(profile)).encode())
    log.info(
        "profiled this device (%s weights) in %.1f s: embed %.3f ms, decoder layer %.3f ms, head %.3f ms per token; "
        "a pass of %s sessions takes %s× one session's; a pass after waiting %.3f ms more",
        form,
        time.perf_counter() - started,
        profile.unit_ms[0],
        profile.unit_ms[1],
        profile.unit_ms[-1],
        "/".join(map(str, BATCHES)),
        "/".join(f"{f:g}" for f in profile.batch_scale),
        profile.pass_ms,
    )
    return profile
