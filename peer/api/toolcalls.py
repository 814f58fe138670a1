"""Tool calls in the model's own syntax: the prompt that offers the tools, the grammar that forces
a call, and the parser that finds calls in an answer as it streams (pure, but for the chat
template's rendering).

A model learned one way to call a function, and its chat template says which:
- Hermes / Qwen2.5 / Qwen3: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`,
  one block per call;
- Llama 3.1 / 3.2 / 3.3: the answer is one JSON object `{"name": ..., "parameters": {...}}`
  (after `<|python_tag|>`, a special token the text does not show);
- Mistral: `[TOOL_CALLS]` (a special token) then a JSON list of `{"name", "arguments"}`.
A template that renders no tools at all (the embedded SmolLM2's) gets the Hermes convention
from us: the tools listed in the system message, past calls and tool results written into the
messages as Hermes' tags, so any instruct model can be offered tools. The parser reads every
syntax whatever the template, so a model that answers in another still gets its calls parsed.
"""

from __future__ import annotations

import functools
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

import llguidance
from transformers import PreTrainedTokenizerBase

from ..model.text import chat_ids
from .tools import ToolUse

Syntax = Literal["hermes", "llama3", "mistral"]
OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_PARALLEL = 8  # calls one forced answer may hold (a small model may repeat itself otherwise)
PROBE_TOOL = {  # everything a template may read of a tool, so a template that renders tools renders this
    "type": "function",
    "function": {
        "name": "probe_tool_x",
        "description": "A probe.",
        "parameters": {
            "type": "object",
            "properties": {"x": {"type": "string", "description": "x"}},
            "required": ["x"],
        },
    },
}
COMPACT = {"whitespace_flexible": False}  # as structured output: no room to ramble in spaces


@dataclass(frozen=True)
class Dialect:
    """How one model's template speaks of tools: whether it renders them itself (`native`), and
    the syntax its answers call them in."""

    native: bool
    syntax: Syntax


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], **extra: Any) -> Any:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, **extra)


@functools.lru_cache(maxsize=8)
def dialect_of(tokenizer: PreTrainedTokenizerBase) -> Dialect:
    """The tokenizer's tool dialect: its template renders tools when a probe tool changes the
    prompt; the syntax is named by what the template writes."""
    template = str(getattr(tokenizer, "chat_template", None) or "")
    probe = [{"role": "user", "content": "hi"}]
    try:
        native = _render(tokenizer, probe, tools=[PROBE_TOOL], tokenize=False) != _render(
            tokenizer, probe, tokenize=False
        )
    except Exception:  # a template that fails on tools does not render them
        native = False
    syntax: Syntax = "hermes"
    if native and OPEN not in template:
        if "<|python_tag|>" in template or "ipython" in template:
            syntax = "llama3"
        elif "[TOOL_CALLS]" in template:
            syntax = "mistral"
    return Dialect(native, syntax)


def _hermes_system(tools: list[dict[str, Any]]) -> str:
    listed = "\n".join(json.dumps(t) for t in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{listed}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        f'{OPEN}{CLOSE} XML tags:\n{OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{CLOSE}'
    )


def hermes_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, str]]:
    """A conversation with tools for a template that knows none: the tools in the system message,
    each past call as a Hermes block in its assistant message, tool results as user messages."""
    out: list[dict[str, str]] = []
    if tools:
        system = _hermes_system(tools)
        if messages and messages[0]["role"] == "system":
            system = f"{messages[0]['content']}\n\n{system}"
            messages = messages[1:]
        out.append({"role": "system", "content": system})
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = [
                {"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in message["tool_calls"]
            ]
            blocks = [f"{OPEN}\n{json.dumps(call)}\n{CLOSE}" for call in calls]
            content = "\n".join(([content] if content else []) + blocks)
        if role == "tool":
            response = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1]["content"].startswith("<tool_response>"):
                out[-1]["content"] += "\n" + response  # the results of one turn's calls, together
                continue
            role, content = "user", response
        out.append({"role": role, "content": content})
    return out


def named_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool results with the name of the function that made them (OpenAI's carry only the call's
    id; some templates, Hermes' among them, want the name)."""
    names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or () if c["id"]}
    return [
        {**m, "name": names[m["tool_call_id"]]}
        if m["role"] == "tool" and "name" not in m and m.get("tool_call_id") in names
        else m
        for m in messages
    ]


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], use: ToolUse) -> list[int]:
    """The conversation's token ids, the tools offered in the model's own way or Hermes'
    (TemplateError from a template that refuses the messages)."""
    tools = list(use.tools)
    if not tools and not any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
        return chat_ids(tokenizer, messages)  # a plain chat, as the template has it
    if dialect_of(tokenizer).native:
        return chat_ids(tokenizer, named_results(messages), tools=tools or None)
    return chat_ids(tokenizer, hermes_messages(messages, tools))


def closed(schema: Any) -> Any:
    """`schema` with objects that do not say otherwise taking no properties beyond those named
    (OpenAI's strict mode): a small model otherwise invents arguments until max_tokens."""
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) if key in ("items", "additionalProperties") else value for key, value in schema.items()}
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {name: closed(value) for name, value in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list):
            out[key] = [closed(value) for value in schema[key]]
    return out


def _call_schema(tools: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """A JSON schema of one call to any of `tools`: its name, then arguments valid for it."""
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t["function"]["name"]}, key: closed(t["function"]["parameters"])},
                "required": ["name", key],
                "additionalProperties": False,
            }
            for t in tools
        ]
    }


def tool_grammar(use: ToolUse, syntax: Syntax) -> str:
    """The grammar of an answer that is a call (or, `parallel`, up to MAX_PARALLEL calls) to one
    of the offered functions, its arguments valid against the function's schema."""
    tools = use.offered()
    many = use.parallel and use.choice == "required"
    if syntax == "llama3":  # one call per answer in Llama's convention
        schema = {"x-guidance": COMPACT, **_call_schema(tools, "parameters")}
        return str(llguidance.LLMatcher.grammar_from_lark(f"start: %json {json.dumps(schema)}\n"))
    if syntax == "mistral":
        items = _call_schema(tools, "arguments")
        schema = {"x-guidance": COMPACT, "type": "array", "items": items, "minItems": 1}
        schema["maxItems"] = MAX_PARALLEL if many else 1
        return str(llguidance.LLMatcher.grammar_from_lark(f"start: %json {json.dumps(schema)}\n"))
    schema = {"x-guidance": COMPACT, **_call_schema(tools, "arguments")}
    repeat = f' ("\\n" call){{0,{MAX_PARALLEL - 1}}}' if many else ""
    call = f"call: {json.dumps(OPEN + chr(10))} %json {json.dumps(schema)} {json.dumps(chr(10) + CLOSE)}"
    return str(llguidance.LLMatcher.grammar_from_lark(f"start: call{repeat}\n{call}\n"))


@dataclass(frozen=True)
class ToolCall:
    """One call the answer made, in OpenAI's terms (arguments as JSON text)."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))

    def openai(self, index: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "type": "function"}
        body["function"] = {"name": self.name, "arguments": self.arguments}
        return body if index is None else {"index": index, **body}


def _calls(value: Any, names: tuple[str, ...]) -> list[ToolCall] | None:
    """The calls a parsed JSON value is (one object or a list of them), or None when it is not."""
    items = value if isinstance(value, list) and value else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in names:
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append(ToolCall(item["name"], json.dumps(arguments, ensure_ascii=False)))
    return calls


def _json_calls(text: str, names: tuple[str, ...]) -> list[ToolCall] | None:
    try:
        return _calls(json.loads(text), names)
    except ValueError:
        return None


@dataclass
class Parsed:
    """What a piece of answer text turned out to be: content to show, calls made."""

    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)


@dataclass
class CallParser:
    """Finds tool calls in an answer's text as it streams: content is released as soon as it
    cannot be the start of a call; a call when its block closes (or, bare JSON, at the end).
    Text that looked like a call but is not one (bad JSON, a function not offered) is content."""

    names: tuple[str, ...]
    _held: str = ""
    _bare: bool | None = None  # the answer is one JSON value (Llama's, Mistral's): held to the end
    made: int = 0  # calls found so far

    def feed(self, text: str) -> Parsed:
        self._held += text
        if self._bare is None:
            start = self._held.lstrip()
            if not start:
                return Parsed()
            self._bare = start[0] in "{["
        return Parsed() if self._bare else self._blocks(final=False)

    def finish(self) -> Parsed:
        """The rest, at the answer's end."""
        if self._bare:
            text, self._held = self._held, ""
            calls = _json_calls(text.strip(), self.names)
            return self._made(Parsed(calls=calls)) if calls else Parsed(content=text)
        return self._blocks(final=True)

    def _made(self, parsed: Parsed) -> Parsed:
        self.made += len(parsed.calls)
        return parsed

    def _blocks(self, final: bool) -> Parsed:
        out = Parsed()
        while (start := self._held.find(OPEN)) >= 0:
            end = self._held.find(CLOSE, start)
            if end < 0 and not final:  # a call's block still open: wait for its end
                out.content += self._held[:start]
                self._held = self._held[start:]
                return self._trim(out)
            body = self._held[start + len(OPEN) : end if end >= 0 else None]
            whole = self._held[: end + len(CLOSE)] if end >= 0 else self._held
            self._held = self._held[len(whole) :]
            calls = _json_calls(body.strip(), self.names)
            if calls:  # whitespace before a call is not content
                out.content = (out.content + whole[:start]).rstrip()
                out.calls += calls
            else:
                out.content += whole
        if final:
            out.content, self._held = out.content + self._held, ""
            if self.made or out.calls:
                out.content = out.content.strip()
            return self._made(out)
        keep = _marker_prefix(self._held)  # the end might be the start of a call's tag
        cut = len(self._held) - keep
        out.content, self._held = out.content + self._held[:cut], self._held[cut:]
        return self._trim(out)

    def _trim(self, out: Parsed) -> Parsed:
        """Trailing whitespace is held back: it is not content if a call follows."""
        stripped = out.content.rstrip()
        self._held = out.content[len(stripped) :] + self._held
        out.content = stripped
        return self._made(out)


def _marker_prefix(text: str) -> int:
    """How many characters at the end of `text` could begin the opening tag."""
    for size in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-size:]):
            return size
    return 0
