"""Weight forms: the compact values, their kernels, and shards that hold them.

The accuracy of each form over many decode steps is a benchmark (`scripts/bench-engine`); here
the maths of each piece is checked against float32, and the embedded model in each form is
checked to hold what it claims and to agree with float32 on teacher-forced steps.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
import torch
from edgeshard.peer.model import weights
from edgeshard.peer.model.convert import compact_cache
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.model.shard import Shard, Step, unit_count
from edgeshard.peer.model.weights import (
    GROUP,
    Int4Linear,
    Int4Weight,
    Int8Linear,
    compute_dtype,
    float_linear,
    int4_from_values,
    quantize_int4,
    quantize_int8,
)

CPU = torch.device("cpu")
TEXT = (
    "The history of the bicycle began in the early nineteenth century. Early designs had no pedals; riders "
    "pushed along the ground with their feet. Later, cranks were fitted to the front wheel, and by the 1880s "
    "the safety bicycle, with two wheels of equal size and a chain drive to the rear wheel, had appeared. It "
    "made cycling popular with many people, and women in particular found new freedom of movement."
)


def test_int8_rows_round_trip_within_half_a_step() -> None:
    weight = torch.randn(64, 96) * torch.linspace(0.01, 2.0, 64)[:, None]  # rows of very different scale
    compact = quantize_int8(weight)
    assert compact.q.dtype == torch.int8 and compact.scales.shape == (64,)
    error = (compact.dequantize() - weight).abs()
    assert bool((error <= compact.scales[:, None] / 2 + 1e-6).all())
    assert compact.nbytes == 64 * 96 + 64 * 4


def test_grouped_int8_rows_keep_llama_cpp_q8_0_values_exactly() -> None:
    q = torch.randint(-127, 128, (16, 4 * GROUP))
    q[:, ::GROUP] = 127  # Q8_0 maps each block's largest magnitude to 127
    d = torch.rand(16, 4) * 0.01 + 1e-4
    blocks = (q.view(16, 4, GROUP) * d[..., None]).view(16, -1)
    rows = quantize_int8(blocks, grouped=True)
    assert rows.scales.shape == (16, 4) and torch.equal(rows.q.long(), q)
    assert torch.allclose(rows.rows(torch.tensor([[3, 5]])), blocks[[3, 5]][None], atol=1e-7)


def test_int4_groups_round_trip_and_llama_cpp_q4_1_values_are_exact() -> None:
    weight = torch.randn(48, 4 * GROUP)
    compact = quantize_int4(weight)
    assert compact.nibbles.shape == (48, 2 * GROUP) and compact.scales.shape == (48, 4)
    steps = compact.scales.repeat_interleave(GROUP, dim=1)
    assert bool(((compact.dequantize() - weight).abs() <= steps / 2 + 1e-5).all())
    # Values of a Q4_1 block (d · q + m, q spanning 0..15) survive a second quantization unchanged.
    q = torch.randint(0, 16, (48, 4 * GROUP))
    q[:, ::GROUP], q[:, 1::GROUP] = 0, 15
    d, m = torch.rand(48, 4) * 0.01 + 1e-3, torch.randn(48, 4) * 0.01
    blocks = (q.view(48, 4, GROUP) * d[..., None] + m[..., None]).view(48, -1)
    again = quantize_int4(blocks)
    assert torch.equal(again.values(), q.to(torch.int32))
    assert torch.allclose(again.dequantize(), blocks, atol=1e-6)


def test_int4_packing_keeps_every_nibble() -> None:
    q = torch.randint(0, 16, (8, 64))
    packed = int4_from_values(q, torch.ones(8, 2), torch.zeros(8, 2))
    assert isinstance(packed, Int4Weight) and packed.nibbles.dtype == torch.uint8
    assert torch.equal(packed.values(), q.to(torch.int32))


@pytest.mark.parametrize("rows", [1, 3, 17])
def test_compact_linears_compute_what_their_dequantized_weights_do(rows: int) -> None:
    weight, bias = torch.randn(96, 128) * 0.05, torch.randn(96)
    x = torch.randn(2, rows, 128)
    int8 = quantize_int8(weight)
    expected8 = x @ int8.dequantize().T + bias
    assert torch.allclose(Int8Linear(int8, bias, CPU)(x), expected8, atol=1e-4)
    int4 = quantize_int4(weight)
    expected4 = x @ int4.dequantize().T + bias
    got4 = Int4Linear(int4, bias, CPU)(x)  # activations go through bfloat16 in the kernel
    assert got4.shape == expected4.shape
    assert (got4 - expected4).abs().max() < 0.02 * expected4.abs().max()


def test_compact_modules_ignore_dtype_casts_and_stay_out_of_the_state_dict() -> None:
    module = Int4Linear(quantize_int4(torch.randn(32, 64)), None, CPU)
    module.to(torch.float32)  # a Shard casts its layers: the kernel's bfloat16 scales must stay
    assert module.scales_and_zeros.dtype == torch.bfloat16
    assert module.state_dict() == {}
    shared = torch.randn(8, 4)
    assert float_linear(shared, CPU, torch.float32).weight.data_ptr() == shared.data_ptr()


def test_compute_dtypes() -> None:
    assert compute_dtype("int4") == compute_dtype("int8") == compute_dtype("float32") == torch.float32
    assert compute_dtype("bfloat16") == torch.bfloat16 and compute_dtype("float16") == torch.float16


@pytest.fixture(scope="module")
def forms_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("forms-cache")


def teacher_forced_argmax(shard: Shard, ids: list[int]) -> list[int]:
    """The argmax after each prefix of `ids`: the first 8 tokens as a prefill, then one decode
    step per following token (the text's tokens are fed, not the form's own choices)."""
    name = f"t{id(ids)}"
    outputs = [int(shard.run(name, 0, torch.tensor(ids[:8])).argmax())]
    for position in range(8, len(ids) - 1):
        outputs.append(int(shard.run(name, position, torch.tensor([ids[position]])).argmax()))
    shard.close(name)
    return outputs


def test_the_embedded_model_in_compact_forms_is_small_cached_and_agrees_with_float32(
    default_source: GGUFModel, forms_cache: Path
) -> None:
    source = GGUFModel(default_source.path, forms_cache)
    total = unit_count(source.config)
    reference = Shard(source, 0, total)
    ids = source.tokenizer().encode(TEXT)
    expected = teacher_forced_argmax(reference, ids)
    file_bytes = default_source.path.stat().st_size
    for form in ("int8", "int4"):
        shard = Shard(source, 0, total, weights=form)
        assert shard.weight_bytes() < reference.weight_bytes() / 3
        if form == "int4":  # the file is Q4_1 (layers) and Q8_0 (embedding): held within 1.3× of it
            assert shard.weight_bytes() < 1.3 * file_bytes
        stored = list(compact_cache(source, form).iterdir())
        # the layers' seven matrices, and the tied embedding/head matrix (int8 rows; int4 for the head)
        assert len(stored) == 7 * source.config.num_hidden_layers + 1
        got = teacher_forced_argmax(shard, ids)
        agreement = sum(a == b for a, b in zip(got, expected, strict=True)) / len(expected)
        assert agreement >= 0.9, (form, agreement)
        again = Shard(source, 0, total, weights=form)  # from the compact cache, same values
        assert teacher_forced_argmax(again, ids) == got


def test_batched_steps_in_int4_equal_single_ones(default_source: GGUFModel, forms_cache: Path) -> None:
    source = GGUFModel(default_source.path, forms_cache)
    shard = Shard(source, 0, 6, weights="int4", max_sessions=4)
    prompts = [torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7])]
    alone = [shard.run(f"a{i}", 0, p) for i, p in enumerate(prompts)]
    together = shard.run_batch([Step(f"b{i}", 0, p) for i, p in enumerate(prompts)])
    for single, batched in zip(alone, together, strict=True):
        assert isinstance(batched, torch.Tensor)
        # bfloat16 activations inside the kernel: batching may round differently, not drift
        assert (single - batched).abs().max() < 0.05 * single.abs().max()


def test_q4_1_file_layers_in_int4_are_the_files_own_values(default_source: GGUFModel, forms_cache: Path) -> None:
    """The embedded file's decoder matrices are Q4_1: int4 holds exactly their values."""
    source = GGUFModel(default_source.path, forms_cache)
    name = "model.layers.3.mlp.down_proj.weight"
    reader = gguf.GGUFReader(str(default_source.path))
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.3.ffn_down.weight"] == "Q4_1"
    shard = Shard(source, 4, 5, weights="int4")
    module = shard.layers[0].mlp.down_proj
    assert isinstance(module, Int4Linear)
    probe = torch.eye(module_in := int(source.config.intermediate_size))[:64]
    assert module_in % GROUP == 0
    through_kernel = module(probe).T  # columns 0..63 of the weight, via bfloat16 activations
    assert torch.allclose(through_kernel, source.tensor(name)[:, :64], atol=1e-2)


def test_a_compact_stage_caches_its_compact_values_not_float32(default_source: GGUFModel, tmp_path: Path) -> None:
    source = GGUFModel(default_source.path, tmp_path)
    Shard(source, 5, 7, weights="int4")  # two decoder layers
    compact = sorted(p.name for p in compact_cache(source, "int4").iterdir())
    floats = sorted(p.name for p in (source.cache_dir / "tensors").iterdir())
    assert len(compact) == 14 and all("_proj.weight" in name for name in compact)
    assert len(floats) == 4 and all("layernorm" in name for name in floats)  # the norms stay float


def test_int4_packing_in_row_chunks_equals_packing_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's packing runs a few rows at a time (its int32 input is 16x the nibbles);
    chunks of any size, and a last short one, must pack as the whole matrix does."""
    compact = quantize_int4(torch.randn(272, 128))  # 272 rows: 4 chunks of 64 and one of 16
    x = torch.randn(3, 128)
    whole = Int4Linear(compact, None, CPU)(x)
    monkeypatch.setattr(weights, "PACK_VALUES", 64 * 128 * 2)
    chunked = Int4Linear(compact, None, CPU)
    assert torch.equal(chunked(x), whole)
