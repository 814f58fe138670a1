"""Model families: which transformers modules run each architecture, and how its GGUF reads.

A family is one `model_type` (config.json) / `general.architecture` (GGUF). Every family here is
a decoder of one shape: embedding, L layers of (RMSNorm, attention with rotary, RMSNorm, gated
MLP), final RMSNorm and head. What differs is inside transformers' own modules (Qwen2's q/k/v
biases, Qwen3's per-head q_norm/k_norm, Phi-3's fused matrices, Gemma's (1 + w) norms), so
the shard builds each family's decoder layer, RMSNorm and rotary embedding, and
`layer_forward` (batch.py) calls their submodules. What is outside those modules (Gemma's
embedding scale, its norms after each sublayer, soft-caps, per-layer windows and rotary
bases) the shard follows from the family's flags and the layer's own attributes.

The tensors a decoder layer needs are read off that family's layer class built on the meta
device, so config switches that add tensors (Llama's `attention_bias`/`mlp_bias`, Qwen3's
`attention_bias`) are followed without a list per family to keep in step.

GGUF: llama.cpp writes Llama-architecture Q/K rows permuted for its rotary layout (Mistral is
written as `llama` too); Qwen2/Qwen3 are not permuted. That is transformers' own rule: only its
`llama` GGUF tensor processor reverses the permutation (modeling_gguf_pytorch_utils.py).

Sliding windows (Mistral v0.1, Qwen2/3 with `use_sliding_window`): transformers masks keys more
than `sliding_window` positions back (`kv_idx > q_idx - sliding_window`), so while a session is
no longer than the window that mask is the plain causal one. Our attention has no window, so a
shard of such a model caps its context at the window (`context_limit`): exact inside it, a
ContextError past it, never a silently different answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import (
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)
from transformers.models.gemma2.modeling_gemma2 import Gemma2DecoderLayer, Gemma2RMSNorm, Gemma2RotaryEmbedding
from transformers.models.gemma3.modeling_gemma3 import Gemma3DecoderLayer, Gemma3RMSNorm, Gemma3RotaryEmbedding
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.models.mistral.modeling_mistral import (
    MistralDecoderLayer,
    MistralRMSNorm,
    MistralRotaryEmbedding,
)
from transformers.models.phi3.modeling_phi3 import Phi3DecoderLayer, Phi3RMSNorm, Phi3RotaryEmbedding
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RMSNorm, Qwen3RotaryEmbedding

from ..errors import ModelFileError


@dataclass(frozen=True)
class Family:
    """How one model_type is built and read."""

    model_type: str
    config_class: type[PretrainedConfig]
    layer_class: Callable[..., nn.Module]  # (config, layer_idx=...) -> decoder layer
    norm_class: Callable[..., nn.Module]  # (hidden_size, eps=...) -> RMSNorm
    rotary_class: Callable[..., nn.Module]  # (config) -> rotary embedding, called (x, position_ids)
    gguf_architecture: str | None  # `general.architecture` of its GGUF files (metadata key prefix)
    gguf_permuted: bool = False  # llama.cpp permuted the Q/K rows (undo on load)
    gguf_layer_names: dict[str, str] = field(default_factory=dict)  # GGUF names beyond the common ones
    needs: str = ""  # what a model of this family needs, for the docs and error messages
    embedding_scale: bool = False  # Gemma: embeddings times sqrt(hidden), rounded to the compute dtype
    windowed: bool = False  # per-layer sliding windows masked in our attention (no context cap)
    rotary_by_layer_type: bool = False  # Gemma 3: local and global layers have their own rotary bases
    gguf_norm_offset: float = 0.0  # llama.cpp writes Gemma's norm weights as 1 + w: subtracted on load


# llama.cpp's names for Gemma's extra norms (its ffn_norm is Gemma's pre-feed-forward norm).
_GEMMA_GGUF_NAMES = {
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}

FAMILIES: tuple[Family, ...] = (
    Family(
        "llama",
        LlamaConfig,
        LlamaDecoderLayer,
        LlamaRMSNorm,
        LlamaRotaryEmbedding,
        gguf_architecture="llama",
        gguf_permuted=True,
        needs="Llama 2/3/3.x, SmolLM, TinyLlama (rope scaling from config.json)",
    ),
    Family(
        "mistral",
        MistralConfig,
        MistralDecoderLayer,
        MistralRMSNorm,
        MistralRotaryEmbedding,
        gguf_architecture=None,  # llama.cpp writes Mistral as `llama`
        needs="Mistral 7B (context capped at sliding_window when set)",
    ),
    Family(
        "qwen2",
        Qwen2Config,
        Qwen2DecoderLayer,
        Qwen2RMSNorm,
        Qwen2RotaryEmbedding,
        gguf_architecture="qwen2",
        needs="Qwen2, Qwen2.5 (q/k/v biases)",
    ),
    Family(
        "qwen3",
        Qwen3Config,
        Qwen3DecoderLayer,
        Qwen3RMSNorm,
        Qwen3RotaryEmbedding,
        gguf_architecture="qwen3",
        gguf_layer_names={"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"},
        needs="Qwen3 dense models (per-head q/k RMSNorm)",
    ),
    Family(
        "phi3",
        Phi3Config,
        Phi3DecoderLayer,
        Phi3RMSNorm,
        Phi3RotaryEmbedding,
        gguf_architecture="phi3",
        # llama.cpp keeps Phi-3's fused matrices: attn_qkv, and ffn_up holding gate and up.
        gguf_layer_names={"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
        needs="Phi-3, Phi-3.5 mini (fused qkv and gate_up; LongRoPE context capped at its original length)",
    ),
    Family(
        "gemma2",
        Gemma2Config,
        Gemma2DecoderLayer,
        Gemma2RMSNorm,
        Gemma2RotaryEmbedding,
        gguf_architecture="gemma2",
        gguf_layer_names=_GEMMA_GGUF_NAMES,
        gguf_norm_offset=1.0,
        needs="Gemma 2 (scaled embeddings, (1 + w) norms, soft-capped attention and logits, sliding layers)",
        embedding_scale=True,
        windowed=True,
    ),
    Family(
        "gemma3_text",
        Gemma3TextConfig,
        Gemma3DecoderLayer,
        Gemma3RMSNorm,
        Gemma3RotaryEmbedding,
        gguf_architecture="gemma3",
        gguf_layer_names={**_GEMMA_GGUF_NAMES, "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"},
        gguf_norm_offset=1.0,
        needs="Gemma 3 text models (1B; q/k norms, local and global layers with their own rotary bases)",
        embedding_scale=True,
        windowed=True,
        rotary_by_layer_type=True,
    ),
)


def supported() -> str:
    """The families, for messages: `llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text`."""
    return ", ".join(family.model_type for family in FAMILIES)


def family_of(model_type: str | None) -> Family:
    """The family of a config's model_type."""
    for family in FAMILIES:
        if family.model_type == model_type:
            return family
    raise ModelFileError(
        f"model type {model_type!r} is not supported{_not_yet(model_type)}; EdgeShard runs {supported()}"
    )


# Families people ask for, and what their layers need that a shard does not do yet.
NOT_YET = {
    "gemma": "Gemma 1: GeGLU with (1 + w) norms and no post-norms (Gemma 2 and 3 run)",
    "gemma3": "the multimodal Gemma 3 directory (4B and up: a vision tower); its GGUF (the text "
    "model, as llama.cpp writes it) and a text-only directory (gemma3_text) run",
}


def _not_yet(name: str | None) -> str:
    return f" (not implemented: {NOT_YET[name]})" if name in NOT_YET else ""


def gguf_family(architecture: str) -> Family:
    """The family of a GGUF file's `general.architecture`."""
    for family in FAMILIES:
        if family.gguf_architecture == architecture:
            return family
    archs = ", ".join(f.gguf_architecture for f in FAMILIES if f.gguf_architecture)
    raise ModelFileError(
        f"GGUF architecture {architecture!r} is not supported{_not_yet(architecture)}; EdgeShard runs {archs}"
    )


def config_family(config: PretrainedConfig) -> Family:
    """The family of a loaded config."""
    return family_of(config.model_type)


def layer_tensor_suffixes(config: PretrainedConfig) -> list[str]:
    """The names of one decoder layer's tensors (`self_attn.q_proj.weight`, ...), as its
    family's layer class, built on the meta device for this config, holds them."""
    with torch.device("meta"):
        layer = config_family(config).layer_class(config, layer_idx=0)
    return list(layer.state_dict())


def context_limit(config: PretrainedConfig, wanted: int | None = None) -> int:
    """The longest session a shard runs exactly: `wanted` (else max_position_embeddings),
    capped at the sliding window where the model has one (see the module's docstring), and for
    LongRoPE (Phi-3/3.5 128k) at the original context: transformers switches every position to
    the long factors once a sequence passes it, which keys already cached did not get."""
    limit = int(wanted or config.max_position_embeddings)
    window = getattr(config, "sliding_window", None)
    if window and not config_family(config).windowed:
        limit = min(limit, int(window))
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") == "longrope":
        limit = min(limit, int(rope.get("original_max_position_embeddings") or limit))
    return limit


def attention_shape(config: PretrainedConfig) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim): head_dim where the config names one (Qwen3's
    is not hidden / heads), else hidden / heads; key/value heads default to the query heads."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
    return heads, kv_heads, int(getattr(config, "head_dim", 0) or int(config.hidden_size) // heads)
