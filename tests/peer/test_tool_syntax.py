"""Tool calling's pure parts: the request's tools validated, the model's dialect found from its
chat template, calls parsed from answers in each model family's syntax as they stream, and the
grammar that forces a call accepting exactly those calls (compiled for the real tokenizer)."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import pytest
from edgeshard.peer.api.errors import RequestError
from edgeshard.peer.api.schemas import parse_chat_request
from edgeshard.peer.api.toolcalls import CallParser, chat_prompt, closed, dialect_of, hermes_messages, tool_grammar
from edgeshard.peer.api.tools import ToolUse, parse_tool_use
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.model.grammar import GrammarError, source_grammars

ARGS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": n, "parameters": ARGS}} for n in ("get_weather", "get_time")]
NAMES = ("get_weather", "get_time")

# Templates in the shape of the families' own (what decides the dialect: whether tools render, what is written)
QWEN_LIKE = (  # as Hermes' reads tools: description and properties unguarded, a result's name required
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t.function.name + ': ' + t.function.description }}"
    "{% for p, f in t.function.parameters.properties | items %} {{ p }}{% endfor %}{% endfor %}</tools>\n"
    'Answer <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>\n{% endif %}'
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'tool' %}"
    "{% if m.name is not defined %}{{ raise_exception('a tool result needs a name') }}{% endif %}"
    "{{ m.name }}: {% endif %}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA_LIKE = (
    "{% if tools %}Environment: ipython\n{% for t in tools %}{{ t | tojson }}{% endfor %}{% endif %}"
    "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{{ m.content }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>{% endif %}"
)


def parse(text: str, step: int = 1) -> tuple[str, list[tuple[str, Any]]]:
    """Content and calls, the text fed `step` characters at a time as a stream gives it."""
    parser, content, calls = CallParser(NAMES), [], []
    for start in range(0, len(text), step):
        piece = parser.feed(text[start : start + step])
        content.append(piece.content)
        calls += piece.calls
    last = parser.finish()
    content.append(last.content)
    calls += last.calls
    return "".join(content), [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("step", [1, 3, 1000])
@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        (  # Qwen2.5 / Qwen3 / Hermes, two calls after some words
            'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {"city": "Oslo"}}\n</tool_call>',
            "Let me check.",
            [("get_weather", {"city": "Paris"}), ("get_time", {"city": "Oslo"})],
        ),
        (
            '{"name": "get_weather", "parameters": {"city": "Paris"}}',
            "",
            [("get_weather", {"city": "Paris"})],
        ),  # Llama 3
        ('[{"name": "get_time", "arguments": {"city": "Rome"}}]', "", [("get_time", {"city": "Rome"})]),  # Mistral
        (
            '<tool_call>\n{"name": "get_time", "arguments": "{\\"city\\": \\"Rome\\"}"}\n</tool_call>',
            "",
            [("get_time", {"city": "Rome"})],
        ),
        (
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima"}}',
            "",
            [("get_weather", {"city": "Lima"})],
        ),  # unclosed at the end
        ("Plain words, a < b, and <tool but no call.", "Plain words, a < b, and <tool but no call.", []),
        ('{"city": "Paris"}', '{"city": "Paris"}', []),  # JSON that is not a call is content
        (
            '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',
            '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',
            [],
        ),
        ("<tool_call>{broken</tool_call> then text", "<tool_call>{broken</tool_call> then text", []),
    ],
)
def test_calls_are_parsed_in_each_familys_syntax_as_they_stream(
    text: str, content: str, calls: list[Any], step: int
) -> None:
    assert parse(text, step) == (content, calls)


def test_content_is_released_before_the_answer_ends_unless_it_could_open_a_call() -> None:
    parser = CallParser(NAMES)
    assert parser.feed("The sky is blue").content == "The sky is blue"
    assert parser.feed(" <tool_").content == ""  # might be a call's tag
    assert parser.feed("tip>").content == " <tool_tip>"


def test_the_dialect_comes_from_the_template(default_source: GGUFModel) -> None:
    smol = default_source.tokenizer()
    assert (dialect_of(smol).native, dialect_of(smol).syntax) == (False, "hermes")  # SmolLM2 renders no tools
    for template, syntax in ((QWEN_LIKE, "hermes"), (LLAMA_LIKE, "llama3")):
        tokenizer = copy.deepcopy(smol)
        tokenizer.chat_template = template
        assert (dialect_of(tokenizer).native, dialect_of(tokenizer).syntax) == (True, syntax)


def test_a_template_that_renders_tools_gets_openais_history_with_what_it_reads(default_source: GGUFModel) -> None:
    tokenizer = copy.deepcopy(default_source.tokenizer())
    tokenizer.chat_template = QWEN_LIKE
    bare = [{"type": "function", "function": {"name": "get_time"}}]  # no description, no parameters
    call = {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Rome"}'}}
    body = {
        "messages": [
            {"role": "user", "content": "Time in Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "10:00"},
        ],
        "tools": bare,
    }
    chat = parse_chat_request(body, "m")
    text = tokenizer.decode(chat_prompt(tokenizer, chat.messages, chat.tools))
    assert "get_time: " in text and '"arguments": {"city": "Rome"}' in text and "get_time: 10:00" in text


def test_a_template_without_tools_gets_them_in_the_system_message_and_results_as_user_turns() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": {"city": "Rome"}}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Time in Rome and Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [call, call]},
        {"role": "tool", "content": "10:00", "tool_call_id": "c1"},
        {"role": "tool", "content": "11:00", "tool_call_id": "c1"},
    ]
    out = hermes_messages(messages, TOOLS)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.") and '"get_weather"' in out[0]["content"]
    assert out[2]["content"].count("<tool_call>") == 2 and '"city": "Rome"' in out[2]["content"]
    assert out[3]["content"] == "<tool_response>\n10:00\n</tool_response>\n<tool_response>\n11:00\n</tool_response>"


def test_strictness_closes_objects_that_do_not_say(default_source: GGUFModel) -> None:
    nested = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}}}
    assert closed(nested)["additionalProperties"] is False
    assert closed(nested)["properties"]["a"]["additionalProperties"] is False
    assert closed({"type": "object", "properties": {}, "additionalProperties": True})["additionalProperties"] is True


@pytest.mark.parametrize(
    ("syntax", "choice", "parallel", "good", "bad"),
    [
        (
            "hermes",
            "required",
            True,
            [
                '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>\n<tool_call>\n{"name":"get_time","arguments":{"city":"Oslo"}}\n</tool_call>'
            ],
            ['<tool_call>\n{"name":"get_weather","arguments":{"town":"Paris"}}\n</tool_call>', "Sure, here you go"],
        ),
        (
            "hermes",
            "get_time",
            True,
            ['<tool_call>\n{"name":"get_time","arguments":{"city":"Oslo"}}\n</tool_call>'],
            ['<tool_call>\n{"name":"get_weather","arguments":{"city":"Oslo"}}\n</tool_call>'],
        ),
        (
            "hermes",
            "required",
            False,
            ['<tool_call>\n{"name":"get_time","arguments":{"city":"Oslo"}}\n</tool_call>'],
            [
                '<tool_call>\n{"name":"get_time","arguments":{"city":"Oslo"}}\n</tool_call>\n<tool_call>\n{"name":"get_time","arguments":{"city":"Oslo"}}\n</tool_call>'
            ],
        ),
        (
            "llama3",
            "required",
            True,
            ['{"name":"get_time","parameters":{"city":"Oslo"}}'],
            ['{"name":"get_time","arguments":{"city":"Oslo"}}'],
        ),
        (
            "mistral",
            "required",
            True,
            ['[{"name":"get_time","arguments":{"city":"Oslo"}}]'],
            ['{"name":"get_time","arguments":{"city":"Oslo"}}'],
        ),
    ],
)
def test_a_forced_calls_grammar_takes_exactly_valid_calls(
    default_source: GGUFModel, syntax: Any, choice: str, parallel: bool, good: list[str], bad: list[str]
) -> None:
    use = parse_tool_use(
        {
            "tools": TOOLS,
            "tool_choice": choice if choice in ("required",) else {"type": "function", "function": {"name": choice}},
            "parallel_tool_calls": parallel,
        }
    )
    grammars = source_grammars(default_source)
    grammar = tool_grammar(use, syntax)
    grammars.check(grammar)
    tokenizer = default_source.tokenizer()

    def accepts(text: str) -> bool:
        matcher = grammars.matcher(grammar)
        try:
            for token in tokenizer.encode(text):
                matcher.consume(token)
        except GrammarError:
            return False
        return matcher.accepting()

    assert all(accepts(text) for text in good)
    assert not any(accepts(text) for text in bad)


def test_a_deeply_nested_tool_schema_compiles_or_is_refused_as_a_grammar(default_source: GGUFModel) -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(400):  # about as deep as a JSON body may nest
        schema = {"type": "object", "properties": {"a": schema}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    use = parse_tool_use({"tools": tools, "tool_choice": "required"})
    with contextlib.suppress(GrammarError, ValueError):  # refused: the API answers 400 naming tools
        source_grammars(default_source).check(tool_grammar(use, "hermes"))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": 3}}]},
            "tools[0].function.description",
        ),
        ({"tools": [{"type": "tool", "function": {"name": "f"}}]}, "tools[0]"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "object", "description": "x" * 300_000}},
                    }
                ]
            },
            "tools",
        ),
        ({"tool_choice": {"type": "function"}, "tools": TOOLS}, "tool_choice"),
    ],
)
def test_tool_lists_are_validated(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as refused:
        parse_tool_use(body)
    assert refused.value.param == param


def test_none_offers_nothing_and_auto_is_the_default() -> None:
    assert not parse_tool_use({"tools": TOOLS, "tool_choice": "none"}).active
    use = parse_tool_use({"tools": TOOLS})
    assert use.active and not use.forced and use.choice == "auto" and use.parallel
    assert parse_tool_use({}) == ToolUse()
