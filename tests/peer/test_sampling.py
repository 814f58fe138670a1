"""Sampling: greedy is argmax; randomness is keyed by (seed, position)."""

from __future__ import annotations

import json

import pytest
import torch
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.model.grammar import json_grammar, source_grammars
from edgeshard.peer.model.sampling import Pick, pick, sample
from edgeshard.peer.model.text import stop_token_ids
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


def test_a_grammar_keeps_random_logits_inside_it_and_ends_on_a_stop_token(default_source: GGUFModel) -> None:
    """Under any logits, the masked samples spell a value of the schema, then only a stop id may come."""
    grammars = source_grammars(default_source)
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    tokenizer = default_source.tokenizer()
    vocab = int(default_source.config.vocab_size)
    for seed in range(3):
        matcher = grammars.matcher(json_grammar(schema))
        generator = torch.Generator().manual_seed(seed)
        tokens: list[int] = []
        while not matcher.done():
            logits = torch.randn(vocab, generator=generator) * 5
            tokens.append(pick(logits, SamplingParams(temperature=1.0, seed=seed), len(tokens), matcher).token)
            assert len(tokens) < 200
        value = json.loads(tokenizer.decode(tokens))
        assert isinstance(value["n"], int) and set(value) == {"n"}
        allowed = matcher.allowed().nonzero().flatten().tolist()
        assert allowed and set(allowed) <= set(stop_token_ids(default_source.config))
        replayed = grammars.matcher(json_grammar(schema), tokens)  # a fail-over's matcher, past the answer so far
        assert replayed.done()


def test_log_probabilities_are_computed_only_when_asked() -> None:
    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    assert pick(logits, SamplingParams(), 0) == Pick(1)
    chosen = pick(logits, SamplingParams(logprobs=2), 0)
    expected = torch.log_softmax(logits, dim=-1)
    assert chosen.token == 1 and chosen.logprob == pytest.approx(float(expected[1]))
    assert [t for t, _ in chosen.top] == [1, 2] and chosen.top[1][1] == pytest.approx(float(expected[2]))
    assert pick(logits, SamplingParams(logprobs=0), 0).top == ()
