"""A GGUF file's config: the family's config class from the `<arch>.*` metadata keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from ..errors import ModelFileError
from .families import Family


def gguf_config(path: Path, family: Family, fields: dict[str, Any], tensors: dict[str, Any]) -> PretrainedConfig:
    """The family's config from the `<arch>.*` metadata (the values transformers derives;
    head_dim from the Q rows, which also covers Qwen3's head_dim != hidden / heads).
    fields: the reader's metadata fields; tensors: the file's tensors under HF names."""

    def field(key: str) -> Any:
        value = optional(fields, key)
        if value is None:
            raise ModelFileError(f"{path} has no metadata key {key!r}")
        return value

    arch = family.gguf_architecture
    heads = int(field(f"{arch}.attention.head_count"))
    embedding = tensors["model.embed_tokens.weight"]
    kv_heads = optional(fields, f"{arch}.attention.head_count_kv")
    kv_count = int(kv_heads) if kv_heads is not None else heads
    if "model.layers.0.self_attn.q_proj.weight" in tensors:
        head_dim = int(tensors["model.layers.0.self_attn.q_proj.weight"].shape[1]) // heads
    else:  # Phi-3: q, k and v rows in one matrix
        fused = tensors["model.layers.0.self_attn.qkv_proj.weight"]
        head_dim = int(fused.shape[1]) // (heads + 2 * kv_count)
    rotary = optional(fields, f"{arch}.rope.dimension_count")
    window = optional(fields, f"{arch}.attention.sliding_window")
    window = int(window) if window is not None else None
    bos, eos = (optional(fields, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos"))
    values: dict[str, Any] = dict(
        vocab_size=int(embedding.shape[1]),
        hidden_size=int(field(f"{arch}.embedding_length")),
        intermediate_size=int(field(f"{arch}.feed_forward_length")),
        num_hidden_layers=int(field(f"{arch}.block_count")),
        num_attention_heads=heads,
        num_key_value_heads=kv_count,
        head_dim=head_dim,
        max_position_embeddings=int(field(f"{arch}.context_length")),
        rms_norm_eps=float(field(f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": float(field(f"{arch}.rope.freq_base")),
        },
        tie_word_embeddings="lm_head.weight" not in tensors,
        bos_token_id=int(bos) if bos is not None else None,
        eos_token_id=int(eos) if eos is not None else None,
    )
    if rotary is not None and int(rotary) != head_dim:
        values["rope_parameters"]["partial_rotary_factor"] = int(rotary) / head_dim
    if family.model_type == "phi3" or family.gguf_norm_offset:  # the families whose layers read a window
        values["sliding_window"] = window
    if family.model_type == "phi3":
        values["pad_token_id"] = None  # Phi3Config's default (32000) names a token of Phi-3's own vocabulary
    if family.gguf_norm_offset:  # Gemma 2 / 3
        values.update(_gemma(fields, str(arch), values))
    config = family.config_class(**values)
    if family.model_type not in ("qwen2", "phi3"):  # Qwen2's q/k/v biases are fixed; Llama's and Qwen3's optional
        config.attention_bias = "model.layers.0.self_attn.q_proj.bias" in tensors
    config._attn_implementation = "sdpa"
    return config


# llama.cpp's Gemma 27B models scale queries by hidden / heads, the others by head_dim
# (llama-model.cpp: f_attention_scale per model type); the 27B is known by its layer count.
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
_GEMMA3_LOCAL_THETA = 10000.0  # llama.cpp's rope_freq_base_train_swa for Gemma 3


def optional(fields: dict[str, Any], key: str) -> Any | None:
    """A metadata key's value, None where the file has no such key."""
    value = fields.get(key)
    return value.contents() if value is not None else None


def _gemma(fields: dict[str, Any], arch: str, values: dict[str, Any]) -> dict[str, Any]:
    """What a Gemma GGUF says beyond the common keys, or llama.cpp assumes for it: soft-caps,
    the query scale and (Gemma 3) the local layers' rotary base."""

    def number(key: str) -> float | None:
        value = optional(fields, f"{arch}.{key}")
        return float(value) if value is not None else None

    hidden, heads, layers = values["hidden_size"], values["num_attention_heads"], values["num_hidden_layers"]
    scalar = hidden // heads if _GEMMA_27B_LAYERS.get(arch) == layers else values["head_dim"]
    extra: dict[str, Any] = {
        "query_pre_attn_scalar": scalar,
        "pad_token_id": int(optional(fields, "tokenizer.ggml.padding_token_id") or 0),
    }
    if arch == "gemma2":
        extra["attn_logit_softcapping"] = number("attn_logit_softcapping")
        extra["final_logit_softcapping"] = number("final_logit_softcapping")
        return extra
    factor = number("rope.scaling.factor")
    full = {"rope_type": "linear", "factor": factor} if factor and factor != 1.0 else {"rope_type": "default"}
    extra["rope_parameters"] = {
        "full_attention": {**full, "rope_theta": values["rope_parameters"]["rope_theta"]},
        "sliding_attention": {"rope_type": "default", "rope_theta": _GEMMA3_LOCAL_THETA},
    }
    return extra
