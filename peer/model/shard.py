"""A shard: the contiguous units one stage runs, with a KV cache per session.

Units (docs/ARCHITECTURE.md): 0 = token embedding, 1..L = decoder layers, L+1 = final norm + LM head.
The maths is transformers' own modules of the model's family (families.py: decoder layer, rotary
embedding, RMSNorm); this module is the glue: which units, which cache, which device and dtype.
A session owns one slot of the shard's KV pool (kvcache.py) for its layers, written in place;
a session may open with blocks of a finished one's (prefix.py).

`Shard.run` is synchronous torch code: callers run it off the event loop (see `worker`).
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from tqdm import tqdm
from transformers import PretrainedConfig

from ..errors import PeerError
from ..wire import PREFIX_BLOCK_TOKENS
from .batch import Slice, layer_forward, plan_pass
from .compiled import compiles, layer_parts, process_mode
from .convert import load_weight, table_target
from .families import attention_shape, config_family, context_limit
from .files import ModelSource, unit_tensor_names
from .fusion import build_layer, held_parts
from .heap import release_freed_memory
from .kvcache import KVPool
from .options import KVForm, WeightForm
from .prefix import Block, PrefixStore
from .rotary import RotaryTables
from .weights import (
    EMBEDDING,
    HEAD,
    Compact,
    Int4Weight,
    RefinedHead,
    Table,
    compute_dtype,
    is_quantized,
    layer_target,
    linear_module,
)


class SessionError(PeerError):
    """A request names an unknown session or a wrong position (e.g. its cache was evicted)."""


class ContextError(SessionError):
    """A request exceeds the configured context length: replaying it elsewhere cannot help."""


_FLOAT_FORMS: dict[torch.dtype, WeightForm] = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}


def unit_count(config: PretrainedConfig) -> int:
    """Units in the chain: embedding, the decoder layers, norm + head."""
    return int(config.num_hidden_layers) + 2


def even_split(units: int, stages: int) -> list[tuple[int, int]]:
    """[start, end) unit ranges for `stages` stages of (nearly) equal size."""
    if not 1 <= stages <= units:
        raise ValueError(f"cannot split {units} units into {stages} stages")
    bounds = [round(i * units / stages) for i in range(stages + 1)]
    return list(itertools.pairwise(bounds))


_PENDING = SessionError("not computed")


@dataclass(frozen=True)
class Step:
    """One session's next inputs: token ids [T] on the embedding stage, else hidden states [T, H]."""

    session: str
    position: int
    inputs: torch.Tensor
    every_row: bool = False  # on the head stage: logits of every position [T, V], not the last [V]


@dataclass
class _Session:
    slot: int
    length: int = 0  # positions already in the cache
    used: float = field(default_factory=time.monotonic)
    reused: bool = False  # opened with cached blocks: the first step may start before their end


class Shard(nn.Module):
    """Units [start, end) of a model (any family in families.py) on one device."""

    def __init__(
        self,
        source: ModelSource,
        start: int,
        end: int,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_sessions: int = 16,
        max_context: int | None = None,
        idle_s: float = 600.0,
        slowdown: float = 1.0,
        reuse: Shard | None = None,
        weights: WeightForm | None = None,
        compile_step: bool | None = None,
        prefix_tokens: int = 0,
        kv_cache: KVForm = "float",
    ) -> None:
        super().__init__()
        # The weight form (weights.py); without one, the plain float form of `dtype`.
        self.form: WeightForm = weights or _FLOAT_FORMS[dtype]
        dtype = compute_dtype(self.form)
        config = source.config
        total = unit_count(config)
        if not 0 <= start < end <= total:
            raise ValueError(f"units [{start}, {end}) outside 0..{total}")
        self.config, self.start, self.end = config, start, end
        self.device, self.dtype = torch.device(device), dtype
        self.max_sessions = max_sessions
        self.max_context = context_limit(config, max_context)
        self.idle_s = idle_s
        if slowdown < 1.0:
            raise ValueError("slowdown is a factor >= 1")
        self.slowdown = slowdown  # testbed only: emulate a slower device by stretching compute
        self.has_embedding = start == 0
        self.has_head = end == total
        first_layer, last_layer = max(start, 1) - 1, min(end, total - 1) - 1
        self.layer_ids = list(range(first_layer, last_layer))

        order = [n for unit in range(start, end) for n in unit_tensor_names(config, unit)]
        names = set(order)
        # Tensors the previous shard of this peer already holds are taken over, not reloaded:
        # a re-plan that moves a split point by a few layers loads only those layers. A shard of
        # another weight form holds other tensors: nothing is taken from it.
        previous = reuse if reuse is not None and reuse.form == self.form else None
        reused = {n: t for n, t in previous.held_tensors().items() if n in names} if previous is not None else {}
        self.reused_tensors = len(reused)
        # The embedding and head load below: a tied matrix may be wanted in two forms.
        tables = {EMBEDDING, HEAD}
        wanted = [n for n in dict.fromkeys(order) if n not in reused and n not in tables]
        # A progress bar on a terminal (tqdm stays quiet when stderr is not one).
        progress = tqdm(
            total=len(wanted), desc=f"loading units [{start}, {end})", unit="tensor", disable=None, leave=False
        )

        def held(name: str) -> torch.Tensor | Compact:
            if name in reused:
                return reused[name]
            value = load_weight(source, name, layer_target(name, self.form))
            progress.update()
            return value

        def prefixed(prefix: str, name: str) -> torch.Tensor | Compact:
            return held(prefix + name)

        family = self.family = config_family(config)
        with torch.device("meta"):  # the model's own layer index: Gemma's picks the layer's window and rotary
            self.layers = nn.ModuleList(family.layer_class(config, layer_idx=index) for index in self.layer_ids)
            self.norm = family.norm_class(config.hidden_size, eps=config.rms_norm_eps) if self.has_head else None
        state: dict[str, torch.Tensor] = {}
        for local, global_id in enumerate(self.layer_ids):
            # A layer at a time, a module at a time: compact values live on only packed in
            # their modules (the load bound is tested in test_load_memory).
            prefix = f"model.layers.{global_id}."
            own = [n.removeprefix(prefix) for n in unit_tensor_names(config, global_id + 1)]
            built = build_layer(self.layers[local], config, own, partial(prefixed, prefix), self.device, dtype)
            for name, tensor in built.items():
                state[f"layers.{local}.{name}"] = tensor
            release_freed_memory()
        if self.norm is not None:
            norm = held("model.norm.weight")
            assert isinstance(norm, torch.Tensor)
            state["norm.weight"] = norm
        progress.close()
        self.load_state_dict(state, strict=True, assign=True)
        quantized = is_quantized(self.form)
        self.embedding: Table | None = None
        self.head: nn.Module | None = None
        if self.has_embedding:
            table: torch.Tensor | Compact | None = reused.get(EMBEDDING) if not quantized else None
            if table is None:
                table = load_weight(source, EMBEDDING, table_target(source, EMBEDDING, self.form))
            self.embedding = Table(table, self.device, dtype)
            del table
        if self.has_head:
            name = EMBEDDING if config.tie_word_embeddings else HEAD
            # A tied head shares the embedding's matrix (float) or rows (compact) when this stage holds both.
            on_hand = self.embedding if self.embedding is not None and name == EMBEDDING else None
            if self.form == "int4":  # int4 for the whole vocabulary, exact rows for the leaders
                shared = on_hand.compact if on_hand is not None else None
                exact = shared or load_weight(source, name, table_target(source, name, self.form))
                coarse = exact if isinstance(exact, Int4Weight) else load_weight(source, name, "int4")
                assert isinstance(coarse, Int4Weight) and not isinstance(exact, torch.Tensor)
                self.head = RefinedHead(coarse, exact, self.device)
                del shared, coarse, exact
            else:
                head: torch.Tensor | Compact | None = None
                if not quantized:
                    head = on_hand.weight if on_hand is not None else reused.get(name)
                if head is None:
                    head = load_weight(source, name, self.form if quantized else None)
                self.head = linear_module(head, None, self.device, dtype)
        # The rotary tables stay float32 (transformers computes cos/sin in float32, then casts).
        self.rotary = family.rotary_class(config).to(self.device)
        self.layers.to(device=self.device, dtype=dtype)  # compact modules keep their own
        if self.norm is not None:
            self.norm.to(device=self.device, dtype=dtype)
        self.eval()
        self.sessions: OrderedDict[str, _Session] = OrderedDict()
        _heads, kv_heads, dim = attention_shape(config)
        # The layers' dense parts, compiled or not (compiled.py; None: the process's --compile).
        if compile_step is None:
            compile_step = compiles(process_mode(), self.form, str(self.device))
        self.parts = layer_parts(compile_step)
        self.pool = KVPool(
            len(self.layers), max_sessions, kv_heads, dim, self.max_context, dtype, self.device, kv_cache
        )
        self.prefixes = PrefixStore(self.pool, prefix_tokens // PREFIX_BLOCK_TOKENS)
        self.tables = RotaryTables(self.rotary, family.rotary_by_layer_type, self.max_context, dtype, self.device)

    def held_tensors(self) -> dict[str, torch.Tensor]:
        """This shard's tensors under their model names (what `unit_tensor_names` lists)."""
        held: dict[str, torch.Tensor] = {}
        for local, global_id in enumerate(self.layer_ids):
            for name, tensor in held_parts(self.config, self.layers[local].state_dict()).items():
                held[f"model.layers.{global_id}.{name}"] = tensor
        if self.embedding is not None and self.embedding.weight is not None:
            held[EMBEDDING] = self.embedding.weight
        if self.norm is not None and self.head is not None:
            held["model.norm.weight"] = self.norm.state_dict()["weight"]
            if isinstance(self.head, nn.Linear):
                held[EMBEDDING if self.config.tie_word_embeddings else HEAD] = self.head.weight.data
        return held

    # --- sessions -------------------------------------------------------------------------

    def weight_bytes(self) -> int:
        """Bytes of the weights this shard holds (shared tensors once)."""
        seen: dict[int, int] = {}
        tensors = [*self.parameters(), *self.buffers()]
        tensors += self.embedding.tensors() if self.embedding is not None else []
        for tensor in tensors:
            seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
        return sum(seen.values())

    def evict_idle(self, now: float | None = None) -> list[str]:
        """Drop sessions idle longer than idle_s; returns their ids."""
        now = time.monotonic() if now is None else now
        idle = [sid for sid, s in self.sessions.items() if now - s.used > self.idle_s]
        for sid in idle:
            self.close(sid)
        return idle

    def close(self, session: str, blocks: Sequence[bytes] = ()) -> None:
        """Forget a session's cache, keeping the blocks named by `blocks` (their keys, from the
        first) in the prefix cache."""
        state = self.sessions.pop(session, None)
        if state is not None:
            self.prefixes.store(state.slot, blocks[: state.length // PREFIX_BLOCK_TOKENS])
            self.pool.release(state.slot)

    def open_reusing(self, session: str, blocks: Sequence[Block]) -> int:
        """Open `session` on cached `blocks` (`prefixes.take`); returns how many. Its first step
        may start at any block boundary up to their end."""
        state = self._session(session, 0, 1)
        self.prefixes.load(state.slot, blocks)
        state.length, state.reused = len(blocks) * PREFIX_BLOCK_TOKENS, True
        return len(blocks)

    def _session(self, session: str, position: int, length: int) -> _Session:
        state = self.sessions.get(session)
        if position == 0:
            # A new session, or a replay from scratch (fail-over): start with an empty cache.
            if state is None and len(self.sessions) >= self.max_sessions:
                self.evict_idle()
                if len(self.sessions) >= self.max_sessions:
                    self.close(next(iter(self.sessions)))  # the least recently used
            slot = self.pool.acquire() if state is None else state.slot
            state = _Session(slot)
            self.sessions[session] = state
        elif state is None:
            raise SessionError(f"unknown session {session} (closed or evicted)")
        if state.reused and position < state.length:  # a later stage held fewer blocks
            state.length = position
        state.reused = False
        if position != state.length:
            raise SessionError(f"session {session}: position {position}, cache holds {state.length}")
        if position + length > self.max_context:
            raise ContextError(f"session {session}: {position + length} positions exceed {self.max_context}")
        self.sessions.move_to_end(session)
        state.used = time.monotonic()
        return state

    # --- compute --------------------------------------------------------------------------

    def run(self, session: str, position: int, inputs: torch.Tensor) -> torch.Tensor:
        """Run this shard for one session's `inputs` at positions [position, position + T).

        inputs: token ids [T] (int64) on the embedding stage, else hidden states [T, H].
        Returns hidden states [T, H], or on the head stage the logits of the last position [V].
        """
        (output,) = self.run_batch([Step(session, position, inputs)])
        if isinstance(output, SessionError):
            raise output
        return output

    def run_batch(self, steps: Sequence[Step]) -> list[torch.Tensor | SessionError]:
        """Run every step in one pass (selective batching); per step, its output or the error
        that kept it out of the batch (an unknown session, a wrong position, a full context)."""
        started = time.perf_counter()
        outputs = self._compute(steps)
        if self.slowdown > 1.0:
            # Blocks the stage's worker thread exactly as slower hardware would.
            time.sleep((self.slowdown - 1.0) * (time.perf_counter() - started))
        return outputs

    @torch.inference_mode()
    def _compute(self, steps: Sequence[Step]) -> list[torch.Tensor | SessionError]:
        results: list[torch.Tensor | SessionError] = []
        admitted: list[tuple[int, Step, _Session]] = []
        seen: set[str] = set()
        for index, step in enumerate(steps):
            try:
                if step.session in seen:
                    raise SessionError(f"session {step.session}: two steps in one batch")
                if int(step.inputs.shape[0]) < 1:
                    raise SessionError("empty input")
                seen.add(step.session)
                state = self._session(step.session, step.position, int(step.inputs.shape[0]))
            except SessionError as error:
                results.append(error)
                continue
            results.append(_PENDING)  # the output replaces it below
            admitted.append((index, step, state))
        if not admitted:
            return results
        admitted.sort(key=lambda entry: entry[2].slot)  # decode rows in slot order: a dense pass (batch.py)
        slices, offset = [], 0
        for _index, step, state in admitted:
            length = int(step.inputs.shape[0])
            slices.append(Slice(offset, length, step.position, state.slot))
            offset += length
        stacked = torch.cat([step.inputs for _i, step, _s in admitted]).to(self.device)
        if self.has_embedding:
            assert self.embedding is not None
            hidden = self.embedding.lookup(stacked)  # [N, H]
            if self.family.embedding_scale:  # Gemma: sqrt(hidden) rounded to the dtype, as transformers does
                hidden = hidden * torch.tensor(self.config.hidden_size**0.5).to(hidden.dtype)
        else:
            hidden = stacked.to(self.dtype)  # [N, H]
        if self.layers:
            needed = max(s.position + s.length for s in slices)
            self.pool.reserve(needed + 1)  # and the next token's: the step after a prompt does not grow it
            plan = plan_pass(slices, self.device)
            tables: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}
            for local, layer in enumerate(self.layers):
                kind = getattr(layer.self_attn, "layer_type", None) if self.family.rotary_by_layer_type else None
                if kind not in tables:
                    cos, sin = self.tables.get(needed, kind)
                    tables[kind] = cos[plan.positions], sin[plan.positions]
                hidden = layer_forward(layer, local, self.pool, hidden, tables[kind], plan, self.parts)
        for (_index, step, state), part in zip(admitted, slices, strict=True):
            state.length = step.position + part.length
        if self.has_head:
            assert self.norm is not None and self.head is not None
            wanted = [
                list(range(s.offset, s.offset + s.length)) if step.every_row else [s.offset + s.length - 1]
                for (_i, step, _s), s in zip(admitted, slices, strict=True)
            ]
            rows = torch.tensor([r for rows in wanted for r in rows], device=self.device)
            logits = self.head(self.norm(hidden[rows]))
            cap = getattr(self.config, "final_logit_softcapping", None)  # Gemma 2
            if cap:
                logits = torch.tanh(logits / cap) * cap
            logits = logits.float().cpu()  # [rows, V], sampled on the CPU
            split = torch.split(logits, [len(rows) for rows in wanted])
            per_step = [
                part if step.every_row else part[0] for (_i, step, _s), part in zip(admitted, split, strict=True)
            ]
        else:
            per_step = [hidden[s.rows] for s in slices]
        for (index, _step, _state), output in zip(admitted, per_step, strict=True):
            results[index] = output
        return results
