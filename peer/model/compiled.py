"""The dense parts of a decoder layer, eager or compiled (torch.compile, inductor).

A layer's step is three parts (batch.py): the projections before attention (norm, fused q/k/v,
Qwen3's head norms, the rotary embedding), attention against the KV pool, and everything after
it (o, the residual, norm, the fused gate/up, the activation, down, the residual). The first and
last are the same computation for every pass whatever its sessions, so they compile well; the
attention part depends on each pass's slots and key lengths and stays eager (as vLLM's piecewise
graphs leave attention out).

Why: in the int4 form a decode step is mostly small ops (the norms' reductions, the rotary's
halves, the activation), each a Python dispatch and an OpenMP region; inductor fuses them into a
few C++ loops around the int4 kernel. Measured on a 2-core CPU (embedded model, int4, one
stage): see README "Against llama.cpp on the same file". The float forms gain nothing measurable
on a CPU (their step is the matrix products), so `auto` compiles the int4 form only.

One compiled function serves every layer of every shard in the process (torch >= 2.5 traces a
layer's parameters as inputs, so layers of one shape share a graph). Row counts are 1 (a decode
step, specialised) or any other (marked dynamic): two graphs per part, compiled on first use.
Inductor's caches live in EdgeShard's cache directory, so a restart loads them instead of
compiling again. A compile that fails (no C++ compiler, an unsupported op) logs once and the
process goes on eager: the parts are pure functions, so running one again eagerly is safe.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .options import COMPILE_CHOICES, COMPILE_ENVIRONMENT, CompileMode, WeightForm

log = logging.getLogger(__name__)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def project(
    block: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries [N, heads, D], keys and values [N, kv_heads, D] of rows `hidden` [N, H], the
    rotary embedding applied at each row's cos/sin [N, D]."""
    attention = block.self_attn
    rows, dim = hidden.shape[0], attention.head_dim
    heads, kv_heads = attention.config.num_attention_heads, attention.config.num_key_value_heads
    fused = attention.qkv_proj(block.input_layernorm(hidden))
    queries = fused[:, : heads * dim].view(rows, heads, dim)
    keys = fused[:, heads * dim : (heads + kv_heads) * dim].view(rows, kv_heads, dim)
    values = fused[:, (heads + kv_heads) * dim :].view(rows, kv_heads, dim)
    if hasattr(attention, "q_norm"):  # Qwen3: RMSNorm over each head's D, before the rotary
        queries, keys = attention.q_norm(queries), attention.k_norm(keys)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return _turn(queries, cos, sin), _turn(keys, cos, sin), values


def _turn(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding on heads x [N, heads, D]: on all D, or with a narrower table
    (Phi's partial_rotary_factor) on a head's first cos.shape[-1] dims only."""
    turned = cos.shape[-1]
    if turned == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    head = x[..., :turned]
    return torch.cat([head * cos + _rotate_half(head) * sin, x[..., turned:]], dim=-1)


def finish(block: Any, residual: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """The layer's output rows [N, H] from its input rows and their attention output [N, heads*D]."""
    mlp = block.mlp
    activation = mlp.act_fn if hasattr(mlp, "act_fn") else mlp.activation_fn  # Phi-3 names it otherwise
    if hasattr(block, "pre_feedforward_layernorm"):  # Gemma 2/3: a norm after each sublayer too
        hidden = residual + block.post_attention_layernorm(block.self_attn.o_proj(attended))
        gate, up = mlp.gate_up_proj(block.pre_feedforward_layernorm(hidden)).chunk(2, dim=-1)
        gemma: torch.Tensor = hidden + block.post_feedforward_layernorm(mlp.down_proj(activation(gate) * up))
        return gemma
    hidden = residual + block.self_attn.o_proj(attended)
    gate, up = mlp.gate_up_proj(block.post_attention_layernorm(hidden)).chunk(2, dim=-1)
    output: torch.Tensor = hidden + mlp.down_proj(activation(gate) * up)
    return output


@dataclass(frozen=True)
class LayerParts:
    """The two dense parts of a layer's step, as the shard runs them."""

    project: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]
    finish: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    compiled: bool


EAGER = LayerParts(project, finish, compiled=False)


def compiles(mode: CompileMode, form: WeightForm, device: str) -> bool:
    """Whether a shard of `form` on `device` compiles its step: `on` always, `off` never,
    `auto` for the int4 form on a CPU with a C++ compiler (where it was measured faster)."""
    if mode != "auto":
        return mode == "on"
    return form == "int4" and device.startswith("cpu") and compiler() is not None


def compiler() -> str | None:
    """The C++ compiler inductor would use on a CPU ($CXX, else g++), if there is one."""
    return shutil.which(os.environ.get("CXX", "g++"))


def process_mode() -> CompileMode:
    """This process's mode (EDGESHARD_COMPILE, set by the CLI's --compile; default auto)."""
    value = os.environ.get(COMPILE_ENVIRONMENT, "auto")
    for mode in COMPILE_CHOICES:
        if value == mode:
            return mode
    raise ValueError(f"{COMPILE_ENVIRONMENT}={value!r} is not one of {', '.join(COMPILE_CHOICES)}")


class _Compiled:
    """One part compiled, falling back to eager for good if compiling it fails."""

    def __init__(self, function: Callable[..., Any], dynamic_arguments: tuple[int, ...]) -> None:
        self.eager = function
        self.compiled: Callable[..., Any] | None = torch.compile(function, dynamic=None)
        self.dynamic_arguments = dynamic_arguments  # positions of the [N, ...] tensor arguments

    def __call__(self, *arguments: Any) -> Any:
        if self.compiled is None:
            return self.eager(*arguments)
        rows = arguments[self.dynamic_arguments[0]].shape[0]
        if rows > 1:  # one graph for every row count above 1 (a decode step keeps its own)
            for index in self.dynamic_arguments:
                torch._dynamo.mark_dynamic(arguments[index], 0)
        try:
            return self.compiled(*arguments)
        except Exception as error:
            log.warning("compiling %s failed, running it eagerly: %s", self.eager.__name__, error)
            self.compiled = None
            return self.eager(*arguments)


_compiled_parts: LayerParts | None = None


def layer_parts(compile_step: bool) -> LayerParts:
    """The process's parts: eager, or the one compiled pair every shard shares."""
    global _compiled_parts
    if not compile_step:
        return EAGER
    if _compiled_parts is None:
        use_cache_dir()
        # Each model shape and weight form a process runs adds two graphs per part (torch's
        # default limit of 8 would send a peer that re-planned across forms back to eager).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        _compiled_parts = LayerParts(_Compiled(project, (1, 2, 3)), _Compiled(finish, (1, 2)), compiled=True)
    return _compiled_parts


def use_cache_dir() -> None:
    """Keep inductor's compiled code under EdgeShard's cache (unless the user chose a place), so a
    restarted peer loads it rather than compiling again. (Inductor writes its default, a folder
    in the system's temporary directory, into the environment on first use: that is not a choice.)"""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as inductor_default

    from .files import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(inductor_default()):
        path = Path(default_cache_dir()) / "inductor"
        path.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
