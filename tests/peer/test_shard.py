"""Shards: only their own tensors, bounded per-session KV caches, the cache directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from edgeshard.peer.model import batch
from edgeshard.peer.model import shard as shard_module
from edgeshard.peer.model.files import GGUFModel, open_model, unit_tensor_names
from edgeshard.peer.model.shard import SessionError, Shard, Step, even_split, unit_count


def test_even_split() -> None:
    assert even_split(32, 3) == [(0, 11), (11, 21), (21, 32)]
    assert even_split(5, 5) == [(i, i + 1) for i in range(5)]
    with pytest.raises(ValueError):
        even_split(3, 4)


def test_a_stage_loads_only_its_units(tmp_path: Path, default_source: GGUFModel) -> None:
    fresh = GGUFModel(default_source.path, tmp_path)
    layers = fresh.config.num_hidden_layers
    middle = Shard(fresh, 11, 21)
    cached = {p.name.removesuffix(".safetensors") for p in (fresh.cache_dir / "tensors").iterdir()}
    wanted = {n for u in range(11, 21) for n in unit_tensor_names(fresh.config, u)}
    assert cached == wanted  # dequantized (and cached) exactly the tensors of units 11..20
    whole = Shard(fresh, 0, unit_count(fresh.config))
    embedding = fresh.config.vocab_size * fresh.config.hidden_size * 4
    per_layer = (whole.weight_bytes() - embedding) / layers  # tied head: the matrix counts once
    assert middle.weight_bytes() == pytest.approx(10 * per_layer, rel=0.01)
    assert middle.weight_bytes() < whole.weight_bytes() / 3


def test_cache_makes_a_second_open_read_files(tmp_path: Path, default_source: GGUFModel) -> None:
    first = GGUFModel(default_source.path, tmp_path)
    first.tokenizer()
    assert (first.cache_dir / "tokenizer" / "tokenizer_config.json").exists()
    second = GGUFModel(default_source.path, tmp_path)
    ids = second.tokenizer().encode("hello world")
    assert ids == first.tokenizer().encode("hello world")
    value = first.tensor("model.layers.3.self_attn.q_proj.weight")
    assert torch.equal(second.tensor("model.layers.3.self_attn.q_proj.weight"), value)


def _shard(random_hf_model: Path, **options: object) -> Shard:
    source = open_model(str(random_hf_model))
    return Shard(source, 0, unit_count(source.config), **options)  # type: ignore[arg-type]


def test_sessions_are_independent_and_bounded(random_hf_model: Path) -> None:
    shard = _shard(random_hf_model, max_sessions=2, max_context=16)
    shard.run("a", 0, torch.tensor([5, 6, 7]))
    shard.run("b", 0, torch.tensor([9, 9]))  # another session in between changes nothing for "a"
    a_next = shard.run("a", 3, torch.tensor([1]))
    c = shard.run("c", 0, torch.tensor([5, 6, 7, 1]))  # a third session evicts the least recent, "b"
    assert a_next.shape == (shard.config.vocab_size,)
    assert torch.allclose(a_next, c, atol=1e-4)
    with pytest.raises(SessionError, match="unknown session b"):
        shard.run("b", 2, torch.tensor([1]))
    with pytest.raises(SessionError, match="position 2"):
        shard.run("a", 2, torch.tensor([1]))
    with pytest.raises(SessionError, match="exceed 16"):
        shard.run("a", 4, torch.arange(13))


def test_decode_with_cache_equals_full_prefill(random_hf_model: Path) -> None:
    shard = _shard(random_hf_model)
    ids = torch.tensor([3, 14, 15, 92, 65, 35])
    shard.run("step", 0, ids[:3])
    shard.run("step", 3, ids[3:5])  # multi-token input after a cache: explicit causal mask
    stepwise = shard.run("step", 5, ids[5:])
    whole = shard.run("whole", 0, ids)
    assert torch.allclose(stepwise, whole, atol=1e-4)


def test_a_batch_computes_what_each_step_computes_alone(random_hf_model: Path) -> None:
    """Selective batching: decode steps and prompt chunks of several sessions in one pass give
    each session the outputs it gets alone; a bad step is refused without spoiling the rest."""
    alone, together = _shard(random_hf_model), _shard(random_hf_model)
    prompts = {"a": [3, 14, 15], "b": [9, 2, 6, 5, 3, 5], "c": [8]}
    for session, ids in prompts.items():
        alone.run(session, 0, torch.tensor(ids))
    together.run_batch([Step(s, 0, torch.tensor(ids)) for s, ids in prompts.items()])
    steps = [Step("a", 3, torch.tensor([7])), Step("b", 6, torch.tensor([1, 2])), Step("c", 1, torch.tensor([4]))]
    expected = [alone.run(step.session, step.position, step.inputs) for step in steps]
    wrong = Step("ghost", 4, torch.tensor([1]))
    outputs = together.run_batch([steps[0], wrong, steps[1], steps[2]])
    assert isinstance(outputs[1], SessionError)
    for got, want in zip([outputs[0], outputs[2], outputs[3]], expected, strict=True):
        assert isinstance(got, torch.Tensor)
        assert torch.allclose(got, want, atol=1e-4)
        assert int(got.argmax()) == int(want.argmax())
    assert [together.sessions[s].length for s in "abc"] == [4, 8, 2]


def test_idle_sessions_are_evicted(random_hf_model: Path) -> None:
    shard = _shard(random_hf_model, idle_s=10)
    shard.run("old", 0, torch.tensor([1]))
    assert shard.evict_idle(now=shard.sessions["old"].used + 11) == ["old"]
    assert "old" not in shard.sessions


def test_a_moved_split_point_reuses_the_tensors_held(random_hf_model: Path) -> None:
    source = open_model(str(random_hf_model))
    whole = Shard(source, 0, 7)
    before, after = Shard(source, 0, 4), Shard(source, 4, 7)
    moved = Shard(source, 0, 5, reuse=before)  # one layer more: only its tensors are loaded
    assert moved.reused_tensors == len(before.held_tensors())
    assert Shard(source, 0, 5, weights="bfloat16", reuse=before).reused_tensors == 0  # another form: none
    rest = Shard(source, 5, 7, reuse=after)
    ids = torch.tensor([5, 6, 7, 8])
    expected = whole.run("s", 0, ids)
    assert torch.equal(rest.run("s", 0, moved.run("s", 0, ids)), expected)


def test_the_kv_pool_grows_and_slots_are_reused(random_hf_model: Path) -> None:
    """Decoding past the pool's first capacities (it doubles) computes what one prefill of the
    same tokens does; a closed session's slot goes to the next, whose past is its own."""
    from edgeshard.peer.model.kvcache import FIRST_CAPACITY

    shard = _shard(random_hf_model, max_sessions=3, max_context=512)
    ids = torch.randint(3, 400, (2 * FIRST_CAPACITY + 9,), generator=torch.Generator().manual_seed(3))
    shard.run("other", 0, ids[:5])
    shard.run("grow", 0, ids[:3])
    for position in range(3, len(ids) - 1):
        shard.run_batch([Step("grow", position, ids[position : position + 1])])
    stepwise = shard.run("grow", len(ids) - 1, ids[-1:])
    assert shard.pool.capacity >= len(ids) > 2 * FIRST_CAPACITY
    slot = shard.sessions["other"].slot
    shard.close("other")
    again = shard.run("again", 0, ids)  # takes the freed slot
    assert shard.sessions["again"].slot == slot
    assert torch.allclose(stepwise, again, atol=1e-4)


def test_decode_rows_of_scattered_slots_attend_together_as_alone(random_hf_model: Path) -> None:
    """Decode steps of sessions in slots with gaps (a closed one in between) and of different
    lengths, in one pass: each gets its own output."""
    alone, together = _shard(random_hf_model), _shard(random_hf_model)
    prompts = {f"s{i}": list(range(3, 3 + 2 * i + 1)) for i in range(5)}
    for session, ids in prompts.items():
        alone.run(session, 0, torch.tensor(ids))
        together.run(session, 0, torch.tensor(ids))
    together.close("s2")
    live = [s for s in prompts if s != "s2"]
    steps = [Step(s, len(prompts[s]), torch.tensor([7])) for s in live]
    outputs = together.run_batch(steps)
    for step, got in zip(steps, outputs, strict=True):
        assert isinstance(got, torch.Tensor)
        assert torch.allclose(got, alone.run(step.session, step.position, step.inputs), atol=1e-4)


def test_steps_out_of_slot_order_pass_dense_and_come_back_in_their_own_order(
    random_hf_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shard stacks a pass's steps in slot order (batch.py's dense pass: no gather or scatter)
    and hands each output back at its step's place; sessions of one length attend unmasked."""
    alone, together = _shard(random_hf_model), _shard(random_hf_model)
    plans: list[Any] = []

    def spy(*args: Any) -> Any:
        plans.append(batch.plan_pass(*args))
        return plans[-1]

    prompts = {"a": [3, 14, 15], "b": [9, 2, 6], "c": [8, 1, 4]}  # slots 0, 1, 2; one length
    for session, ids in prompts.items():
        alone.run(session, 0, torch.tensor(ids))
        together.run(session, 0, torch.tensor(ids))
    steps = [Step(s, 3, torch.tensor([token])) for s, token in (("c", 5), ("a", 7), ("b", 2))]
    monkeypatch.setattr(shard_module, "plan_pass", spy)
    outputs = together.run_batch(steps)
    monkeypatch.undo()
    assert plans[0].decode.dense and plans[0].decode.mask is None
    for step, got in zip(steps, outputs, strict=True):
        assert isinstance(got, torch.Tensor)
        assert torch.allclose(got, alone.run(step.session, step.position, step.inputs), atol=1e-4), step.session
    assert [together.sessions[s].slot for s in "abc"] == [0, 1, 2]


def test_masked_positions_of_memory_that_held_nan_change_no_output(
    random_hf_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory the allocator hands back may hold anything, NaN included; a decode row attends
    over the pass's longest range under a mask, and 0 x NaN is NaN. With every fresh tensor
    filled with NaN, the pool still reads zero where nothing was written and shorter sessions'
    outputs stay their own (a SIGKILL test once streamed token 0 for ever from this)."""
    real_empty = torch.empty

    def poisoned(*args: Any, **kwargs: Any) -> torch.Tensor:
        tensor = real_empty(*args, **kwargs)
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    alone = _shard(random_hf_model)
    monkeypatch.setattr(torch, "empty", poisoned)
    together = _shard(random_hf_model)
    prompts = {"short": [3, 4], "long": list(range(3, 12))}
    for session, ids in prompts.items():
        alone.run(session, 0, torch.tensor(ids))
        together.run(session, 0, torch.tensor(ids))
    steps = [Step(s, len(ids), torch.tensor([7])) for s, ids in prompts.items()]
    for step, got in zip(steps, together.run_batch(steps), strict=True):
        assert isinstance(got, torch.Tensor) and bool(torch.isfinite(got).all())
        assert torch.allclose(got, alone.run(step.session, step.position, step.inputs), atol=1e-4)
