"""GGUF blocks into the compact forms: bit for bit where the form can hold the file's values
(checked against gguf's own dequantization), the nearest values elsewhere, read a few rows at a
time from a real file (Q/K rows un-permuted across chunk boundaries)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from edgeshard.peer.model import rows
from edgeshard.peer.model.blocks import EXACT_INT4, int4_parts, int8_parts
from edgeshard.peer.model.convert import read_compact
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.model.gguf_names import reverse_permute
from edgeshard.peer.model.rows import read_float
from edgeshard.peer.model.weights import GROUP, int4_from_values

from .quantized_files import Q, random_blocks, write_llama


def reference(raw: np.ndarray, qtype: Q) -> torch.Tensor:
    return torch.from_numpy(np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32))


@pytest.mark.parametrize("qtype", sorted(EXACT_INT4, key=lambda q: q.name), ids=lambda q: q.name)
def test_4_bit_blocks_are_int4_groups_bit_for_bit(qtype: Q) -> None:
    raw = random_blocks(qtype, 12, 512, np.random.default_rng(1))
    q, scales, mins = (torch.from_numpy(a) for a in int4_parts(raw, qtype))
    assert q.shape == (12, 512) and scales.shape == mins.shape == (12, 512 // GROUP) and int(q.max()) <= 15
    held = int4_from_values(q, scales, mins)
    assert torch.equal(held.dequantize(), reference(raw, qtype))
    ids = torch.tensor([[3, 0], [11, 3]])
    assert torch.equal(held.rows(ids), reference(raw, qtype)[ids])


def test_q8_0_blocks_are_int8_groups_bit_for_bit() -> None:
    raw = random_blocks(Q.Q8_0, 12, 512, np.random.default_rng(2))
    q, scales = (torch.from_numpy(a) for a in int8_parts(raw, Q.Q8_0))
    values = (q.float().view(12, -1, GROUP) * scales[..., None]).view(12, -1)
    assert q.dtype == torch.int8 and torch.equal(values, reference(raw, Q.Q8_0))


@pytest.fixture(scope="module")
def shrunk_chunks() -> object:
    """Chunks of 2,048 values: the 256-wide test matrices are read 8 rows at a time."""
    saved = rows.CHUNK_VALUES
    rows.CHUNK_VALUES = 2048
    yield None
    rows.CHUNK_VALUES = saved


def whole(path: Path, gguf_name: str) -> torch.Tensor:
    tensor = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == gguf_name)
    return reference(tensor.data, tensor.tensor_type)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q8_0], ids=lambda q: q.name)
def test_a_file_read_in_chunks_holds_its_own_values(tmp_path: Path, qtype: Q, shrunk_chunks: object) -> None:
    path = write_llama(tmp_path / f"{qtype.name}.gguf", qtype, qtype)
    source = GGUFModel(path, tmp_path / "cache")
    heads = int(source.config.num_attention_heads)
    file_q = reverse_permute(whole(path, "blk.1.attn_q.weight").numpy(), heads)
    target = "int8g" if qtype == Q.Q8_0 else "int4"
    for name, expected in (
        ("model.layers.1.self_attn.q_proj.weight", torch.from_numpy(file_q)),  # permuted rows
        ("model.layers.0.mlp.down_proj.weight", whole(path, "blk.0.ffn_down.weight")),
        ("model.embed_tokens.weight", whole(path, "token_embd.weight")),
    ):
        assert torch.equal(read_compact(source, name, target).dequantize(), expected), name
        assert torch.equal(read_float(source, name), expected), name


@pytest.mark.parametrize("qtype", [Q.Q5_0, Q.Q5_1, Q.Q5_K, Q.Q6_K, Q.F16], ids=lambda q: q.name)
def test_other_types_come_to_the_nearest_int4_and_int8(tmp_path: Path, qtype: Q, shrunk_chunks: object) -> None:
    path = write_llama(tmp_path / f"{qtype.name}.gguf", qtype, Q.Q8_0)
    source = GGUFModel(path, tmp_path / "cache")
    name = "model.layers.0.mlp.gate_proj.weight"
    expected = whole(path, "blk.0.ffn_gate.weight")
    rounding = 1e-6 * float(expected.abs().max())
    four = read_compact(source, name, "int4")
    steps = four.scales.repeat_interleave(GROUP, dim=1)
    assert bool(((four.dequantize() - expected).abs() <= steps / 2 + rounding).all())
    eight = read_compact(source, name, "int8")
    assert bool(((eight.dequantize() - expected).abs() <= eight.scales[:, None] / 2 + rounding).all())
