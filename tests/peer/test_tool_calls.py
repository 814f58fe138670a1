"""Tool calling through the API's handlers over a local cluster of stage servers (real sockets,
the real model): a forced call's arguments always validate against the function's schema, even
from the 135M model; calls stream as OpenAI's deltas; a tool's result is fed back; hostile tool
lists get a 400 naming the fault."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
import pytest_asyncio
from edgeshard.peer.model.files import GGUFModel

from tests.peer.test_api_backend import _post, _stream, served_two_stages

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}}, "required": ["zone"]}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The weather in a city", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "get_time", "description": "The time in a zone", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api_url(default_source: GGUFModel) -> AsyncIterator[str]:
    async with served_two_stages(default_source, context=1024) as url:
        yield url


async def chat(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(_post, f"{url}/v1/chat/completions", {"messages": ASK, "tools": TOOLS, **body})


def valid_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The message's calls, each checked: an id, a function offered, arguments valid for it."""
    calls = message["tool_calls"]
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("call_")
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])
    return calls


async def test_a_forced_call_validates_against_its_functions_schema(api_url: str) -> None:
    for temperature, seed in ((0, 0), (1.0, 1), (1.0, 2)):
        body = {"tool_choice": "required", "temperature": temperature, "seed": seed, "max_tokens": 120}
        status, answer = await chat(api_url, body)
        assert status == 200, answer
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "tool_calls", answer
        assert valid_calls(choice["message"]) and choice["message"]["content"] is None


async def test_a_named_function_is_the_one_called_once(api_url: str) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    status, answer = await chat(api_url, {"tool_choice": named, "temperature": 1.0, "seed": 3, "max_tokens": 80})
    assert status == 200, answer
    calls = valid_calls(answer["choices"][0]["message"])
    assert [c["function"]["name"] for c in calls] == ["get_time"]


async def test_auto_answers_text_or_well_formed_calls(api_url: str) -> None:
    for seed in range(3):
        status, answer = await chat(api_url, {"temperature": 1.0, "seed": seed, "max_tokens": 60})
        assert status == 200, answer
        choice = answer["choices"][0]
        if choice["message"].get("tool_calls"):
            valid_calls(choice["message"])
            assert choice["finish_reason"] in ("tool_calls", "length")
        else:
            assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")


async def test_streamed_calls_come_as_deltas_that_add_up_to_the_whole_answer(api_url: str) -> None:
    body = {"tool_choice": "required", "temperature": 0, "max_tokens": 120, "seed": 0}
    _status, whole = await chat(api_url, body)
    events = await asyncio.to_thread(
        _stream, f"{api_url}/v1/chat/completions", {"messages": ASK, "tools": TOOLS, **body, "stream": True}
    )
    calls: dict[int, dict[str, Any]] = {}
    for event in events:
        for delta in event["choices"][0]["delta"].get("tool_calls", []):
            call = calls.setdefault(delta["index"], {"id": None, "name": "", "arguments": ""})
            call["id"] = call["id"] or delta.get("id")
            call["name"] += delta.get("function", {}).get("name") or ""
            call["arguments"] += delta.get("function", {}).get("arguments") or ""
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    expected = whole["choices"][0]["message"]["tool_calls"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in expected
    ]
    assert all(c["id"] for c in calls.values())


async def test_a_tools_result_is_fed_back_and_answered(api_url: str) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    }
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    status, answer = await chat(
        api_url, {"messages": messages, "tool_choice": "none", "temperature": 0, "max_tokens": 40}
    )
    assert status == 200, answer
    message = answer["choices"][0]["message"]
    assert message["content"] and "tool_calls" not in message
    assert answer["usage"]["prompt_tokens"] > 100  # the tool's result and the call are in the prompt


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}] * 2}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
            "tools[0].function.parameters",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"a": {"$ref": "#/no"}}},
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools",
        ),
        ({"tools": "all of them"}, "tools"),
        ({"tool_choice": {"type": "function", "function": {"name": "launch"}}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
        (
            {
                "messages": [
                    *ASK,
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]},
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        ({"messages": [*ASK, {"role": "tool", "content": "x", "tool_call_id": 7}]}, "messages[1].tool_call_id"),
    ],
)
async def test_hostile_tool_lists_are_refused_by_name(api_url: str, body: dict[str, Any], param: str) -> None:
    status, answer = await chat(api_url, {**body, "max_tokens": 4})
    assert status == 400, answer
    assert answer["error"]["param"] == param, answer
