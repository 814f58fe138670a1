"""Sampling: greedy is argmax; randomness is keyed by (seed, position)."""

from __future__ import annotations

import pytest
import torch
from edgeshard.peer.model.sampling import sample
from edgeshard.peer.wire import SamplingParams


def _logits() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1000) * 3


def test_greedy_is_argmax() -> None:
    logits = _logits()
    assert sample(logits, SamplingParams(), 7) == int(logits.argmax())


def test_same_seed_and_position_same_token_regardless_of_history() -> None:
    logits, params = _logits(), SamplingParams(temperature=1.0, seed=3)
    first = [sample(logits, params, p) for p in range(50)]
    assert first == [sample(logits, params, p) for p in range(50)]
    assert sample(logits, params, 30) == first[30]  # no hidden state carried between calls
    assert len(set(first)) > 5
    assert first != [sample(logits, SamplingParams(temperature=1.0, seed=4), p) for p in range(50)]


def test_top_k_and_top_p_restrict_choices() -> None:
    logits = _logits()
    top5 = set(torch.topk(logits, 5).indices.tolist())
    assert {sample(logits, SamplingParams(1.0, top_k=5, seed=1), p) for p in range(200)} <= top5
    probabilities = torch.softmax(logits, -1)
    ordered = torch.sort(probabilities, descending=True)
    cut = int((torch.cumsum(ordered.values, -1) < 0.5).sum()) + 1
    nucleus = set(ordered.indices[:cut].tolist())
    assert {sample(logits, SamplingParams(1.0, top_p=0.5, seed=2), p) for p in range(200)} <= nucleus


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2)])
def test_bad_parameters(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**bad)  # type: ignore[arg-type]
