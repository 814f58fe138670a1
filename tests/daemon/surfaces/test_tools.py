"""Function calling as agents use it, through OpenAI's own client and Ollama's against real
peers: forced calls (required, a named function) whose arguments validate against the
function's schema, auto, streamed call deltas as the client assembles them, a tool's result fed
back, Ollama's `tools` on /api/chat."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import ollama
import pytest

from ..peers import Peer, client

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
FORECAST = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
}
CONVERT = {
    "type": "object",
    "properties": {"amount": {"type": "number"}, "currency": {"type": "string", "enum": ["EUR", "USD", "JPY"]}},
    "required": ["amount", "currency"],
}
TOOLS: Any = [
    {"type": "function", "function": {"name": "forecast", "description": "Weather forecast", "parameters": FORECAST}},
    {"type": "function", "function": {"name": "convert", "description": "Convert money", "parameters": CONVERT}},
]
SCHEMAS = {"forecast": FORECAST, "convert": CONVERT}
ASK: Any = [{"role": "user", "content": "Will it rain in Lisbon this week?"}]


def check(calls: Any) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for call in calls:
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[call.function.name])
        out.append((call.function.name, arguments))
    return out


def test_required_and_named_calls_validate_through_openais_client(surface_cluster: list[Peer]) -> None:
    api = client(surface_cluster[0])
    for seed in (0, 1):
        answer = api.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=1.0, seed=seed, max_tokens=150
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, answer
        check(choice.message.tool_calls)
    named: Any = {"type": "function", "function": {"name": "convert"}}
    answer = api.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=named, temperature=0, max_tokens=100
    )
    calls = answer.choices[0].message.tool_calls
    assert calls and [name for name, _ in check(calls)] == ["convert"]


def test_auto_gives_text_or_valid_calls_and_streams_them_as_the_client_assembles(surface_cluster: list[Peer]) -> None:
    api = client(surface_cluster[1])
    answer = api.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=60)
    choice = answer.choices[0]
    if choice.message.tool_calls:
        check(choice.message.tool_calls)
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")
    with api.chat.completions.stream(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=150
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    whole = api.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=150
    )
    assert final.choices[0].finish_reason == "tool_calls"
    assert check(final.choices[0].message.tool_calls) == check(whole.choices[0].message.tool_calls)


def test_a_tools_result_goes_back_into_the_conversation(surface_cluster: list[Peer]) -> None:
    api = client(surface_cluster[2])
    first = api.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=150
    )
    calls = first.choices[0].message.tool_calls
    assert calls
    results = [{"role": "tool", "tool_call_id": c.id, "content": '{"rain": false, "sun": "all week"}'} for c in calls]
    messages: Any = [*ASK, first.choices[0].message.model_dump(exclude_none=True), *results]
    second = api.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=40)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert second.usage and first.usage and second.usage.prompt_tokens > first.usage.prompt_tokens


def test_ollamas_chat_takes_tools_and_tool_results(surface_cluster: list[Peer]) -> None:
    api = ollama.Client(host=surface_cluster[0].api, timeout=300)
    try:
        options = {"temperature": 0, "num_predict": 40}
        plain = api.chat(model=MODEL, messages=ASK, options=options, stream=False)
        offered = api.chat(model=MODEL, messages=ASK, tools=TOOLS, options=options, stream=False)
        assert offered.prompt_eval_count and plain.prompt_eval_count
        assert offered.prompt_eval_count > plain.prompt_eval_count + 50  # the tools are in the prompt
        for call in offered.message.tool_calls or []:
            jsonschema.validate(call.function.arguments, SCHEMAS[call.function.name])
        history: Any = [
            *ASK,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "forecast", "arguments": {"city": "Lisbon", "days": 7}}}],
            },
            {"role": "tool", "content": "sunny all week"},
        ]
        answered = api.chat(model=MODEL, messages=history, tools=TOOLS, options=options, stream=False)
        assert answered.done and answered.prompt_eval_count and answered.prompt_eval_count > offered.prompt_eval_count
    finally:
        api.close()
