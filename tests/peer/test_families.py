"""Model families: a small random model of each, from a Hugging Face directory and from a GGUF
file written the way llama.cpp's converter writes it, split over three stages, gives
transformers' own greedy tokens."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from edgeshard.peer.errors import ModelFileError
from edgeshard.peer.model.families import context_limit, family_of
from edgeshard.peer.model.files import GGUFModel, HuggingFaceModel, ModelSource, unit_tensor_names
from edgeshard.peer.model.shard import ContextError, Shard, Step, even_split, unit_count
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
)

from .quantized_files import write_llama

PROMPT = [3, 14, 15, 92, 65, 35, 89, 79]
NEW_TOKENS = 12
SHAPE = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=5,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    initializer_range=0.2,  # decisive logits: greedy choices are not near-ties
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
CONFIGS: dict[str, PretrainedConfig] = {
    # Llama 3.x rope scaling passes from config.json to the rotary embedding.
    "llama": LlamaConfig(
        **SHAPE,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "mistral": MistralConfig(**SHAPE, sliding_window=256, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    "qwen2": Qwen2Config(**SHAPE, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    # Qwen3's head_dim is its own (128 by default, as transformers assumes for a Qwen3 GGUF).
    "qwen3": Qwen3Config(**SHAPE, head_dim=128, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    # Phi-3: q/k/v and gate/up fused in the model itself (pad_token_id: the default 32000 is past this vocabulary).
    "phi3": Phi3Config(**SHAPE, pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 1e4}),
}
GGUF_ARCH = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
}
GGUF_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "self_attn.qkv_proj": "attn_qkv",
    "mlp.gate_up_proj": "ffn_up",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf `LlamaModel.permute` (Q/K rows for its rotary layout)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


# llama.cpp's names for Gemma's norms (its ffn_norm is Gemma's pre-feed-forward norm).
GEMMA_GGUF_LAYER = {
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}


def _gguf_name(name: str, layer_names: dict[str, str] = GGUF_LAYER) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if name in fixed:
        return fixed[name]
    if name == "lm_head.weight":
        return "output.weight"
    _model, _layers, index, rest = name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{index}.{layer_names[module]}.{kind}"


def _write_gguf(model: PreTrainedModel, path: Path, family: str) -> None:
    """float32 tensors under llama.cpp's names and metadata keys; Q/K permuted for `llama`;
    Gemma's norms written as 1 + w, as llama.cpp's converter does."""
    config, arch = model.config, GGUF_ARCH[family]
    gemma = arch.startswith("gemma")
    rope = config.rope_parameters.get("full_attention", config.rope_parameters)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"{family}-test")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_embedding_length(config.hidden_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(rope["rope_theta"])
    if gemma:
        writer.add_sliding_window(config.sliding_window)
        if rope.get("factor"):
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(rope["factor"])
        if arch == "gemma2":
            writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
    writer.add_vocab_size(config.vocab_size)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    if config.pad_token_id is not None:
        writer.add_pad_token_id(config.pad_token_id)
    layer_names = {**GGUF_LAYER, **GEMMA_GGUF_LAYER} if gemma else GGUF_LAYER
    for name, tensor in model.state_dict().items():
        if gemma and name == "lm_head.weight":
            continue  # tied: llama.cpp writes the embedding only
        weights = tensor.float().numpy()
        if gemma and name.endswith("norm.weight"):
            weights = weights + 1
        if arch == "llama" and ".q_proj." in name:
            weights = _permute(weights, config.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            weights = _permute(weights, config.num_key_value_heads)
        writer.add_tensor(_gguf_name(name, layer_names), np.ascontiguousarray(weights))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _reference(model: PreTrainedModel) -> list[int]:
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([PROMPT]),
            attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
    return [int(t) for t in output[0, len(PROMPT) :]]


def _chain(source: ModelSource, weights: str = "float32") -> list[Shard]:
    """Three shards over consecutive unit ranges, holding `weights`."""
    return [Shard(source, a, b, weights=weights) for a, b in even_split(unit_count(source.config), 3)]  # type: ignore[arg-type]


def _prompt_logits(shards: list[Shard]) -> torch.Tensor:
    """The chained shards' logits after PROMPT."""
    hidden = torch.tensor(PROMPT)
    for shard in shards:
        hidden = shard.run("s", 0, hidden)
    return hidden


def _three_stages(source: ModelSource) -> list[int]:
    """Greedy tokens from three shards over consecutive unit ranges, chained in-process."""
    shards = _chain(source)
    tokens: list[int] = []
    inputs, position = torch.tensor(PROMPT), 0
    for _ in range(NEW_TOKENS):
        hidden = inputs
        for shard in shards:
            hidden = shard.run("s", position, hidden)
        position += len(inputs)
        logits = hidden.clone()
        logits[source.config.eos_token_id] = float("-inf")  # as generate's min_new_tokens does
        tokens.append(int(logits.argmax()))
        inputs = torch.tensor(tokens[-1:])
    return tokens


@pytest.fixture(scope="module", params=list(CONFIGS))
def family_files(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    family = str(request.param)
    directory = tmp_path_factory.mktemp(family)
    torch.manual_seed(20240611)
    model = AutoModelForCausalLM.from_config(CONFIGS[family], dtype=torch.float32)
    model.save_pretrained(str(directory))
    _write_gguf(model, directory / "model.gguf", family)
    return family, directory


def test_hf_directory_matches_transformers(family_files: tuple[str, Path], tmp_path: Path) -> None:
    family, directory = family_files
    source = HuggingFaceModel(directory, tmp_path)
    assert source.config.model_type == family
    reference = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    expected = _reference(reference)
    assert _three_stages(source) == expected
    if family == "llama":  # the llama3 scaling reached our rotary embedding (else tokens could agree by luck)
        shard = Shard(source, 0, 2)
        assert shard.rotary.rope_type == "llama3"  # type: ignore[comparison-overlap]


def test_gguf_matches_transformers_loading_it(family_files: tuple[str, Path], tmp_path: Path) -> None:
    family, directory = family_files
    source = GGUFModel(directory / "model.gguf", tmp_path)
    assert source.family.gguf_architecture == GGUF_ARCH[family]
    reference = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file="model.gguf", dtype=torch.float32)
    expected = _reference(reference.eval())
    assert _three_stages(source) == expected
    if family != "llama":  # default rope: the GGUF is the HF model (Llama's GGUF drops the llama3 scaling)
        hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
        assert expected == _reference(hf)


def test_layer_tensors_are_the_layer_classes_own(family_files: tuple[str, Path], tmp_path: Path) -> None:
    family, directory = family_files
    source = HuggingFaceModel(directory, tmp_path)
    names = set(unit_tensor_names(source.config, 1))
    extra = {
        "llama": set(),
        "mistral": set(),
        "qwen2": {f"model.layers.0.self_attn.{p}_proj.bias" for p in "qkv"},
        "qwen3": {"model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight"},
        "phi3": {"model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.mlp.gate_up_proj.weight"},
    }[family]
    parts = 6 if family == "phi3" else 9  # Phi-3's fused q/k/v and gate/up are two tensors, not five
    assert extra <= names and len(names) == parts + len(extra) - (2 if family == "phi3" else 0)
    gguf_source = GGUFModel(directory / "model.gguf", tmp_path)
    assert set(unit_tensor_names(gguf_source.config, 1)) == names


def test_a_qwen3_batch_computes_what_each_step_computes_alone(tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("qwen3-batch")
    torch.manual_seed(7)
    AutoModelForCausalLM.from_config(CONFIGS["qwen3"]).save_pretrained(str(directory))
    source = HuggingFaceModel(directory, directory)
    units = unit_count(source.config)
    alone, together = Shard(source, 0, units), Shard(source, 0, units)
    prompts = {"a": [3, 14, 15], "b": [9, 2, 6, 5, 3, 5]}
    for session, ids in prompts.items():
        alone.run(session, 0, torch.tensor(ids))
    together.run_batch([Step(s, 0, torch.tensor(ids)) for s, ids in prompts.items()])
    steps = [Step("a", 3, torch.tensor([7])), Step("b", 6, torch.tensor([1, 2]))]
    expected = [alone.run(step.session, step.position, step.inputs) for step in steps]
    for got, want in zip(together.run_batch(steps), expected, strict=True):
        assert isinstance(got, torch.Tensor)
        assert torch.allclose(got, want, atol=1e-4)


def test_a_sliding_window_caps_the_context(family_files: tuple[str, Path], tmp_path: Path) -> None:
    family, directory = family_files
    source = HuggingFaceModel(directory, tmp_path)
    window = 256 if family == "mistral" else None
    assert context_limit(source.config) == (window or 512)
    if window:
        shard = Shard(source, 0, 1, max_context=1024)
        assert shard.max_context == window
        with pytest.raises(ContextError):
            shard.run("s", 0, torch.zeros(window + 1, dtype=torch.long))


def test_other_families_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text"):
        family_of("gpt2")
    directory = tmp_path / "gpt2"
    directory.mkdir()
    (directory / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelFileError, match="'gpt2' is not supported"):
        _ = HuggingFaceModel(directory, tmp_path).config


def test_multimodal_gemma3_and_gemma1_are_refused_with_what_is_missing() -> None:
    with pytest.raises(ModelFileError, match="vision tower"):
        family_of("gemma3")
    with pytest.raises(ModelFileError, match="Gemma 1"):
        family_of("gemma")


GEMMA = {**SHAPE, "head_dim": 16, "tie_word_embeddings": True, "sliding_window": 4, "pad_token_id": 0}
GEMMA_CONFIGS: dict[str, PretrainedConfig] = {
    # Soft-caps low enough to bind on this model's scores and logits; a window shorter than the
    # prompt, so the sliding layers' masks decide tokens.
    "gemma2": Gemma2Config(**GEMMA, query_pre_attn_scalar=12, attn_logit_softcapping=2.0, final_logit_softcapping=5.0),
    "gemma3_text": Gemma3TextConfig(
        **GEMMA,
        query_pre_attn_scalar=12,
        layer_types=["sliding_attention", "full_attention"] * 2 + ["sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    ),
}


@pytest.fixture(scope="module", params=list(GEMMA_CONFIGS))
def gemma_directory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp(str(request.param))
    torch.manual_seed(20240612)
    AutoModelForCausalLM.from_config(GEMMA_CONFIGS[request.param], dtype=torch.float32).save_pretrained(str(directory))
    return directory


def test_gemma_from_a_hf_directory_matches_transformers(gemma_directory: Path, tmp_path: Path) -> None:
    """Scaled embeddings, (1 + w) norms, pre/post sublayer norms, soft-caps, sliding layers past
    their window and Gemma 3's two rotary bases, over three stages."""
    source = HuggingFaceModel(gemma_directory, tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(str(gemma_directory), dtype=torch.float32).eval()
    assert len(PROMPT) + NEW_TOKENS > source.config.sliding_window  # the window binds
    assert context_limit(source.config) == 512  # windows are masked, not a cap
    assert _three_stages(source) == _reference(reference)
    # Logits too (Gemma 2's final soft-cap leaves greedy tokens as they are, not the logits).
    hidden = _prompt_logits(_chain(source))
    with torch.inference_mode():
        expected = reference(torch.tensor([PROMPT])).logits[0, -1]
    assert torch.allclose(hidden, expected, atol=1e-4)


def test_a_gemma_batch_computes_what_each_step_computes_alone(gemma_directory: Path, tmp_path: Path) -> None:
    """Sliding-window and soft-capped attention in a batched decode pass and a later prompt chunk."""
    source = HuggingFaceModel(gemma_directory, tmp_path)
    units = unit_count(source.config)
    alone, together = Shard(source, 0, units), Shard(source, 0, units)
    prompts = {"a": [3, 14, 15, 9, 26, 5], "b": [9, 2, 6, 5, 3, 5, 8, 9, 7]}
    for session, ids in prompts.items():
        alone.run(session, 0, torch.tensor(ids))
    together.run_batch([Step(s, 0, torch.tensor(ids)) for s, ids in prompts.items()])
    for round in range(3):
        steps = [Step("a", 6 + round, torch.tensor([7 + round])), Step("b", 9 + round, torch.tensor([1 + round]))]
        expected = [alone.run(step.session, step.position, step.inputs) for step in steps]
        for got, want in zip(together.run_batch(steps), expected, strict=True):
            assert isinstance(got, torch.Tensor)
            assert torch.allclose(got, want, atol=1e-4)
    chunk = [Step("a", 9, torch.tensor([4, 4, 2, 1, 6])), Step("b", 12, torch.tensor([3]))]
    expected = [alone.run(step.session, step.position, step.inputs) for step in chunk]
    for got, want in zip(together.run_batch(chunk), expected, strict=True):
        assert isinstance(got, torch.Tensor)
        assert torch.allclose(got, want, atol=1e-4)


def test_phi3_partial_rotary_and_longrope_match_transformers(tmp_path: Path) -> None:
    """Phi-4-mini's shape: the rotary turns only part of each head; Phi-3.5's LongRoPE runs its
    short factors within the original context, which caps the shard's."""
    rope = {
        "rope_type": "longrope",
        "rope_theta": 1e4,
        "partial_rotary_factor": 0.5,
        "short_factor": [1.0 + 0.1 * i for i in range(4)],
        "long_factor": [2.0 + 0.5 * i for i in range(4)],
        "original_max_position_embeddings": 128,
    }
    config = Phi3Config(
        **{**SHAPE, "max_position_embeddings": 1024},
        pad_token_id=0,
        original_max_position_embeddings=128,
        rope_parameters=rope,
    )
    torch.manual_seed(5)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(str(tmp_path / "phi"))
    source = HuggingFaceModel(tmp_path / "phi", tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path / "phi"), dtype=torch.float32).eval()
    assert _three_stages(source) == _reference(reference)
    assert context_limit(source.config) == 128


def test_a_tensor_type_gguf_cannot_read_is_refused_by_name(tmp_path: Path) -> None:
    path = write_llama(tmp_path / "q8_1.gguf", gguf.GGMLQuantizationType.Q8_1, gguf.GGMLQuantizationType.Q8_0)
    with pytest.raises(ModelFileError, match="Q8_1 is not supported"):
        _ = GGUFModel(path, tmp_path).config


@pytest.mark.parametrize(("form", "agreement"), [("int8", 0.995), ("int4", 0.9)])
def test_phi3_fused_matrices_are_held_compact(tmp_path: Path, form: str, agreement: float) -> None:
    """Phi-3's own fused matrices (qkv, gate_up) are held compact as they are, not split, and
    three compact stages give logits close to the float ones (cosine similarity; int4 of this
    64-wide random model is coarse: measured 0.93, and 0.76 for the Llama of the same shape,
    while a wrong row order or a split fused matrix gives about 0)."""
    torch.manual_seed(11)
    AutoModelForCausalLM.from_config(CONFIGS["phi3"], dtype=torch.float32).save_pretrained(str(tmp_path / "phi"))
    source = HuggingFaceModel(tmp_path / "phi", tmp_path)
    logits = {}
    for held in ("float32", form):
        shards = _chain(source, held)
        logits[held] = _prompt_logits(shards)
    layer = shards[1].layers[0]
    assert not isinstance(layer.self_attn.qkv_proj, torch.nn.Linear)
    assert not isinstance(layer.mlp.gate_up_proj, torch.nn.Linear)
    similarity = torch.nn.functional.cosine_similarity(logits[form], logits["float32"], dim=0)
    assert float(similarity) >= agreement, float(similarity)


# As a Gemma GGUF can say it: the query scale is head_dim's (llama.cpp's rule below 27B), the
# layer types are the defaults (Gemma 3: every 6th layer global) and the local rotary base 10000.
GEMMA_GGUF_CONFIGS: dict[str, PretrainedConfig] = {
    "gemma2": Gemma2Config(**GEMMA, query_pre_attn_scalar=16, attn_logit_softcapping=2.0, final_logit_softcapping=5.0),
    "gemma3_text": Gemma3TextConfig(
        **{**GEMMA, "num_hidden_layers": 6},
        query_pre_attn_scalar=16,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    ),
}


@pytest.mark.parametrize("family", list(GEMMA_GGUF_CONFIGS))
def test_a_gemma_gguf_runs_as_its_hf_directory(family: str, tmp_path: Path) -> None:
    """A Gemma GGUF written as llama.cpp writes it (norms as 1 + w, its names and keys) gives
    the HF model's tokens and logits over three stages."""
    torch.manual_seed(20240613)
    model = AutoModelForCausalLM.from_config(GEMMA_GGUF_CONFIGS[family], dtype=torch.float32).eval()
    model.save_pretrained(str(tmp_path / "hf"))
    _write_gguf(model, tmp_path / "model.gguf", family)
    source = GGUFModel(tmp_path / "model.gguf", tmp_path)
    assert source.config.model_type == family
    assert source.config.sliding_window == 4 and source.config.query_pre_attn_scalar == 16
    assert _three_stages(source) == _reference(model)
    hidden = _prompt_logits(_chain(source))
    with torch.inference_mode():
        expected = model(torch.tensor([PROMPT])).logits[0, -1]
    assert torch.allclose(hidden, expected, atol=1e-4)


@pytest.mark.parametrize(("form", "agreement"), [("int8", 0.995), ("int4", 0.9)])
def test_gemma_runs_in_the_compact_forms(gemma_directory: Path, tmp_path: Path, form: str, agreement: float) -> None:
    """The Gemma steps (soft-caps, windows, extra norms) around compact matrices: logits close to
    float32's over three stages (cosine similarity; int4 of this 64-wide model is coarse)."""
    source = HuggingFaceModel(gemma_directory, tmp_path)
    logits = {held: _prompt_logits(_chain(source, held)) for held in ("float32", form)}
    similarity = torch.nn.functional.cosine_similarity(logits[form], logits["float32"], dim=0)
    assert float(similarity) >= agreement, float(similarity)
