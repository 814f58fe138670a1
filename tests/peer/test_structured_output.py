"""Structured output and log-probabilities through the API's handlers over a local cluster of
stage servers (real sockets, the real model): answers that must match a JSON schema always
parse and validate, even from a 135M model; log-probabilities are the model's own; what cannot
be served is refused by name."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
import pytest_asyncio
import torch
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.pipeline.origin import PREFILL_CHUNK_TOKENS
from transformers import PreTrainedModel

from tests.engine_fixtures import chat_ids
from tests.peer.test_api_backend import _post, _stream, served_two_stages

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


def nested(depth: int) -> dict[str, Any]:
    """Arrays of arrays of ... of strings."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


ASK = [{"role": "user", "content": "Describe a person who lives in a big city, as JSON."}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api_url(default_source: GGUFModel) -> AsyncIterator[str]:
    async with served_two_stages(default_source, context=512) as url:
        yield url


async def chat(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(_post, f"{url}/v1/chat/completions", {"messages": ASK, **body})


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


async def test_a_json_schema_answer_parses_and_validates_whole_and_streamed(api_url: str) -> None:
    for temperature, seed in ((0, 0), (1.0, 1), (1.0, 2)):
        body = {"response_format": schema_format(PERSON), "temperature": temperature, "seed": seed, "max_tokens": 80}
        status, answer = await chat(api_url, body)
        assert status == 200, answer
        assert answer["choices"][0]["finish_reason"] == "stop", answer
        value = json.loads(answer["choices"][0]["message"]["content"])
        jsonschema.validate(value, PERSON)
        events = await asyncio.to_thread(
            _stream, f"{api_url}/v1/chat/completions", {"messages": ASK, **body, "stream": True}
        )
        streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        assert streamed == answer["choices"][0]["message"]["content"]


async def test_json_object_answers_are_objects_and_free_answers_are_not_constrained(api_url: str) -> None:
    status, answer = await chat(
        api_url, {"response_format": {"type": "json_object"}, "temperature": 0, "max_tokens": 60}
    )
    assert status == 200, answer
    content = answer["choices"][0]["message"]["content"]
    if answer["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # cut at max_tokens: still a JSON object's beginning
        assert content.startswith("{")
    status, free = await chat(api_url, {"response_format": {"type": "text"}, "temperature": 0, "max_tokens": 12})
    assert status == 200 and not free["choices"][0]["message"]["content"].startswith("{")


async def test_chat_logprobs_are_the_models_own(
    api_url: str, default_source: GGUFModel, reference_model: PreTrainedModel
) -> None:
    body = {"logprobs": True, "top_logprobs": 5, "temperature": 0, "max_tokens": 10}
    status, answer = await chat(api_url, body)
    assert status == 200, answer
    entries = answer["choices"][0]["logprobs"]["content"]
    tokens = answer["edgeshard"]["token_ids"]
    assert len(entries) == len(tokens) and all(len(e["top_logprobs"]) == 5 for e in entries)
    prompt = chat_ids(default_source, ASK[0]["content"])
    with torch.no_grad():
        logits = reference_model(torch.tensor([prompt + tokens])).logits[0].float()
    expected = torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : -1]
    text = "".join(e["token"] for e in entries)
    assert text == answer["choices"][0]["message"]["content"]
    for entry, token, row in zip(entries, tokens, expected, strict=True):
        assert entry["logprob"] == pytest.approx(float(row[token]), abs=2e-3)
        assert entry["top_logprobs"][0]["logprob"] == pytest.approx(entry["logprob"])  # greedy: the best
        assert sum(math.exp(t["logprob"]) for t in entry["top_logprobs"]) <= 1 + 1e-6
        assert [t["logprob"] for t in entry["top_logprobs"]] == sorted(
            (t["logprob"] for t in entry["top_logprobs"]), reverse=True
        )
    events = await asyncio.to_thread(
        _stream, f"{api_url}/v1/chat/completions", {"messages": ASK, **body, "stream": True}
    )
    streamed = [
        e
        for event in events
        if event["choices"] and event["choices"][0]["logprobs"]
        for e in event["choices"][0]["logprobs"]["content"]
    ]
    # The stream may take the prompt's blocks from the prefix cache, computed in other chunks: the
    # same values to float rounding, not bit for bit.
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in entries], abs=1e-4)
    status, plain = await chat(api_url, {"temperature": 0, "max_tokens": 10})
    assert plain["choices"][0]["logprobs"] is None and plain["edgeshard"]["token_ids"] == tokens


async def test_text_completion_logprobs_in_the_legacy_shape(api_url: str) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": 3}
    status, answer = await asyncio.to_thread(_post, f"{api_url}/v1/completions", body)
    assert status == 200, answer
    lists = answer["choices"][0]["logprobs"]
    count = len(answer["edgeshard"]["token_ids"])
    assert len(lists["tokens"]) == len(lists["token_logprobs"]) == len(lists["top_logprobs"]) == count
    assert all(len(top) <= 3 for top in lists["top_logprobs"]) and all(lp <= 0 for lp in lists["token_logprobs"])
    assert "".join(lists["tokens"]) == answer["choices"][0]["text"]
    assert lists["text_offset"] == sorted(lists["text_offset"]) and lists["text_offset"][0] == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": schema_format({"type": "object", "properties": {"a": {"$ref": "#/nope"}}})},
            "response_format",
        ),
        (
            {
                "response_format": schema_format(
                    {
                        "type": "object",
                        "properties": {f"k{i}": {"type": "string", "description": "x" * 200} for i in range(400)},
                    }
                )
            },
            "response_format.json_schema.schema",
        ),
        ({"response_format": schema_format(nested(200))}, "response_format.json_schema.schema"),
        ({"response_format": schema_format({"type": "string", "format": "zork"})}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": [1, 2]}}},
            "response_format.json_schema.schema",
        ),
        ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools[0].function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": "yes"}, "logprobs"),
    ],
)
async def test_what_cannot_be_served_is_refused_by_name(api_url: str, body: dict[str, Any], param: str) -> None:
    status, answer = await chat(api_url, {**body, "max_tokens": 4})
    assert status == 400, answer
    assert answer["error"]["param"] == param, answer


async def test_an_echoed_prompts_own_logprobs_are_the_models_across_chunks_whole_and_streamed(
    api_url: str, default_source: GGUFModel, reference_model: PreTrainedModel
) -> None:
    """What lm-evaluation-harness's local-completions asks for a log-likelihood: the prompt's
    token ids, echo, logprobs 1 (and max_tokens 0 or 1). The prompt spans two prefill chunks."""
    tokenizer = default_source.tokenizer()
    prompt = tokenizer.encode(" ".join(["The quick brown fox jumps over the lazy dog."] * 30))[:300]
    assert len(prompt) == 300 > PREFILL_CHUNK_TOKENS
    with torch.no_grad():
        rows = torch.log_softmax(reference_model(torch.tensor([prompt])).logits[0].float(), dim=-1)
    expected = [float(rows[i - 1, prompt[i]]) for i in range(1, len(prompt))]
    for max_tokens in (0, 1):
        body = {"prompt": prompt, "max_tokens": max_tokens, "echo": True, "logprobs": 1, "temperature": 0}
        status, answer = await asyncio.to_thread(_post, f"{api_url}/v1/completions", body)
        assert status == 200, answer
        lists = answer["choices"][0]["logprobs"]
        assert len(lists["token_logprobs"]) == len(prompt) + max_tokens
        assert lists["token_logprobs"][0] is None and lists["top_logprobs"][0] is None
        assert lists["token_logprobs"][1 : len(prompt)] == pytest.approx(expected, abs=2e-3)
        for i, top in enumerate(lists["top_logprobs"][1:], 1):
            assert len(top) == 1 and max(top.values()) >= lists["token_logprobs"][i] - 1e-6
            best = int(torch.argmax(rows[i - 1])) if i < len(prompt) else None
            if best is not None and best == prompt[i]:  # greedy here: the best is the token itself
                assert max(top.values()) == lists["token_logprobs"][i]
        assert answer["choices"][0]["text"].startswith(tokenizer.decode(prompt))
    events = await asyncio.to_thread(_stream, f"{api_url}/v1/completions", {**body, "max_tokens": 2, "stream": True})
    streamed = [
        lp
        for e in events
        if e["choices"] and e["choices"][0]["logprobs"]
        for lp in e["choices"][0]["logprobs"]["token_logprobs"]
    ]
    assert streamed[0] is None and streamed[1 : len(prompt)] == pytest.approx(expected, abs=2e-3)
    assert len(streamed) == len(prompt) + 2
