"""Fused projections: a decoder layer's q/k/v matrices as one, and its MLP's gate/up as one.

At one row a matrix product's fixed cost (a kernel call, its threads' start) is a large share
of a small matrix's time (the k and v projections of a grouped-query model are a quarter of q's
size or less), so a shard multiplies by one matrix whose rows are the parts' rows stacked. Rows
are independent outputs, so the stacked product computes each part's own values; compact forms
are stacked before the kernel packs them (groups run along the input, so stacking rows keeps
every group whole and exact).

The parts keep their model names outside the layer: `held_tensors` (for a shard that takes
tensors over) gives the fused matrix's row ranges back as views under the parts' names.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from transformers import PretrainedConfig

from .families import attention_shape, layer_tensor_suffixes
from .weights import Compact, from_tensors, linear_module

# The fused module's name in a layer, and the parts it stacks, in row order.
FUSED: dict[str, tuple[str, ...]] = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


def part_rows(config: PretrainedConfig, fused: str) -> list[int]:
    """Rows of each part of `fused`, in order."""
    if fused == "mlp.gate_up_proj":
        return [int(config.intermediate_size)] * 2
    heads, kv_heads, dim = attention_shape(config)
    return [heads * dim, kv_heads * dim, kv_heads * dim]


def stack_rows(loads: list[Callable[[], torch.Tensor | Compact]], rows: list[int]) -> torch.Tensor | Compact:
    """The matrices `loads` read (all of one form, `rows` rows each) stacked along their output
    rows: the stack is allocated once and each part copied in and freed before the next is
    read, so stacking never holds the parts and the stack at once."""
    stacked: dict[str, torch.Tensor] = {}
    compact = False
    start = 0
    for load, count in zip(loads, rows, strict=True):
        part = load()
        compact = not isinstance(part, torch.Tensor)
        fields = {"t": part} if isinstance(part, torch.Tensor) else part.tensors()
        for name, value in fields.items():
            if value.shape[0] != count:
                raise ValueError(f"a fused part has {value.shape[0]} rows, not {count}")
            if name not in stacked:
                stacked[name] = torch.empty((sum(rows), *value.shape[1:]), dtype=value.dtype)
            stacked[name][start : start + count] = value
        start += count
        del part, fields
    return from_tensors(stacked) if compact else stacked["t"]


def build_layer(
    layer: nn.Module,
    config: PretrainedConfig,
    names: list[str],
    load: Callable[[str], torch.Tensor | Compact],
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Give a layer built on the meta device its fused and compact modules; `names` are its own
    tensors' names within the layer, `load` reads one. Each matrix is read only when its module
    is built, and a compact one lives on only in that module's packing, so a load holds at most
    one module's matrices twice. Returns the float tensors left for its state dict."""
    own: dict[str, torch.Tensor | Compact] = {}
    state: dict[str, torch.Tensor] = {}
    for fused, parts in FUSED.items():
        parent, _dot, attribute = fused.rpartition(".")
        owner = layer.get_submodule(parent)
        if f"{fused}.weight" in names:  # fused in the model itself (Phi-3)
            weight = load(f"{fused}.weight")
            bias_read = load(f"{fused}.bias") if f"{fused}.bias" in names else None
            bias = bias_read if isinstance(bias_read, torch.Tensor) else None
        else:
            weight = stack_rows([partial(load, f"{p}.weight") for p in parts], part_rows(config, fused))
            biases = [load(f"{p}.bias") if f"{p}.bias" in names else None for p in parts]
            bias = torch.cat([b for b in biases if isinstance(b, torch.Tensor)]) if biases[0] is not None else None
            for part in parts:
                delattr(owner, part.rpartition(".")[2])
        if isinstance(weight, torch.Tensor):
            with torch.device("meta"):
                module: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            state[f"{fused}.weight"] = weight
            if bias is not None:
                state[f"{fused}.bias"] = bias
        else:
            module = linear_module(weight, bias, device, dtype)
        setattr(owner, attribute, module)
        del weight, module
    fused_names = {
        f"{p}.{kind}" for fused, parts in FUSED.items() for p in (fused, *parts) for kind in ("weight", "bias")
    }
    rest = [n for n in names if n not in fused_names]
    for name in rest:
        if not name.endswith(".weight"):
            continue
        value = load(name)
        if isinstance(value, torch.Tensor):
            own[name] = value
            continue
        # A compact matrix of its own (o, down): its Linear becomes the matching quantized module.
        path = name.removesuffix(".weight")
        own_bias = load(f"{path}.bias") if f"{path}.bias" in names else None
        parent, _dot, attribute = path.rpartition(".")
        module = linear_module(value, own_bias if isinstance(own_bias, torch.Tensor) else None, device, dtype)
        setattr(layer.get_submodule(parent), attribute, module)
        del value, module
    for name in rest:
        if name.endswith(".bias") and name.removesuffix(".bias") + ".weight" in own:
            own[name] = load(name)
    state.update({name: tensor for name, tensor in own.items() if isinstance(tensor, torch.Tensor)})
    return state


def held_parts(config: PretrainedConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A layer's float state with each fused matrix (and bias) split back into its parts' views
    (a matrix the model itself fuses keeps its own name)."""
    held = dict(state)
    own = set(layer_tensor_suffixes(config))
    for fused, parts in FUSED.items():
        if f"{fused}.weight" in own:
            continue
        for kind in ("weight", "bias"):
            tensor = held.pop(f"{fused}.{kind}", None)
            if tensor is not None:
                pieces = torch.split(tensor, part_rows(config, fused))
                held.update({f"{part}.{kind}": piece for part, piece in zip(parts, pieces, strict=True)})
    return held
