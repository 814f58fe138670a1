"""GGUF files of quantized blocks for the tests: random block bytes (any bytes are a valid block
once its fp16 fields hold finite values), in a small Llama written with gguf's writer."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
# Byte offsets of each type's fp16 fields within a block.
FP16_FIELDS = {
    Q.Q4_0: (0,),
    Q.Q4_1: (0, 2),
    Q.Q5_0: (0,),
    Q.Q5_1: (0, 2),
    Q.Q8_0: (0,),
    Q.Q8_1: (0, 2),
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),
}
SHAPE = dict(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=384)


def random_blocks(qtype: Q, rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [rows, row bytes]: random blocks of `qtype` with scales of about 1e-3..1e-2."""
    if qtype in (Q.F32, Q.F16):
        return rng.standard_normal((rows, columns)).astype(np.float32 if qtype == Q.F32 else np.float16)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, columns // block, size), dtype=np.uint8)
    for offset in FP16_FIELDS[qtype]:
        values = rng.uniform(1e-3, 1e-2, (rows, columns // block)).astype(np.float16)
        raw[..., offset : offset + 2] = values.view(np.uint8).reshape(rows, -1, 2)
    return raw.reshape(rows, -1)


def write_llama(path: Path, matrices: Q, tables: Q, seed: int = 0, shape: dict[str, int] = SHAPE) -> Path:
    """A random Llama: decoder matrices of type `matrices`, embedding and head of `tables`,
    norms F32; the embedded model's metadata keys (no tokenizer)."""
    rng = np.random.default_rng(seed)
    hidden, head_dim = shape["hidden"], shape["hidden"] // shape["heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(512)
    writer.add_block_count(shape["layers"])
    writer.add_feed_forward_length(shape["intermediate"])
    writer.add_embedding_length(hidden)
    writer.add_head_count(shape["heads"])
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def add(name: str, qtype: Q, rows: int, columns: int) -> None:
        data = random_blocks(qtype, rows, columns, rng)
        if data.dtype == np.uint8:
            writer.add_tensor(name, data, raw_shape=(rows, data.shape[1]), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data)

    add("token_embd.weight", tables, shape["vocab"], hidden)
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    add("output.weight", tables, shape["vocab"], hidden)
    kv = shape["kv_heads"] * head_dim
    for layer in range(shape["layers"]):
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"blk.{layer}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        for name, rows, columns in (
            ("attn_q", hidden, hidden),
            ("attn_k", kv, hidden),
            ("attn_v", kv, hidden),
            ("attn_output", hidden, hidden),
            ("ffn_gate", shape["intermediate"], hidden),
            ("ffn_up", shape["intermediate"], hidden),
            ("ffn_down", hidden, shape["intermediate"]),
        ):
            add(f"blk.{layer}.{name}.weight", matrices, rows, columns)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
