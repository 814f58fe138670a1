"""GGUF tensor names onto Hugging Face's, and llama.cpp's Q/K row order undone."""

from __future__ import annotations

import numpy as np

from .families import Family

_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def gguf_to_hf_name(name: str, family: Family | None = None) -> str | None:
    """The Hugging Face name of a GGUF tensor (None for tensors we do not use)."""
    fixed = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    layer_names = {**_GGUF_LAYER_NAMES, **(family.gguf_layer_names if family else {})}
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in layer_names:
        return f"model.layers.{parts[1]}.{layer_names[parts[2]]}.{parts[3]}"
    return None


def reverse_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (as transformers' LlamaTensorProcessor does)."""
    dim = weights.shape[0] // heads // 2
    shaped = weights.reshape(heads, dim, 2, *weights.shape[1:])
    return shaped.swapaxes(2, 1).reshape(weights.shape)
