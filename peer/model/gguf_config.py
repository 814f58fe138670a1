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
        value = fields.get(key)
        if value is None:
            raise ModelFileError(f"{path} has no metadata key {key!r}")
        return value.contents()

    arch = family.gguf_architecture
    heads = int(field(f"{arch}.attention.head_count"))
    kv_heads = fields.get(f"{arch}.attention.head_count_kv")
    embedding = tensors["model.embed_tokens.weight"]
    kv_count = int(kv_heads.contents()) if kv_heads is not None else heads
    if "model.layers.0.self_attn.q_proj.weight" in tensors:
        head_dim = int(tensors["model.layers.0.self_attn.q_proj.weight"].shape[1]) // heads
    else:  # Phi-3: q, k and v rows in one matrix
        fused = tensors["model.layers.0.self_attn.qkv_proj.weight"]
        head_dim = int(fused.shape[1]) // (heads + 2 * kv_count)
    rotary = fields.get(f"{arch}.rope.dimension_count")
    window = fields.get(f"{arch}.attention.sliding_window")
    bos, eos = (fields.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos"))
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
        bos_token_id=int(bos.contents()) if bos is not None else None,
        eos_token_id=int(eos.contents()) if eos is not None else None,
    )
    if rotary is not None and int(rotary.contents()) != head_dim:
        values["rope_parameters"]["partial_rotary_factor"] = int(rotary.contents()) / head_dim
    if family.model_type == "phi3":
        values["pad_token_id"] = None  # Phi3Config's default (32000) names a token of Phi-3's own vocabulary
        values["sliding_window"] = int(window.contents()) if window is not None else None
    config = family.config_class(**values)
    if family.model_type not in ("qwen2", "phi3"):  # Qwen2's q/k/v biases are fixed; Llama's and Qwen3's optional
        config.attention_bias = "model.layers.0.self_attn.q_proj.bias" in tensors
    config._attn_implementation = "sdpa"
    return config
