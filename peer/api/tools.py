"""Function calling's request side (pure): `tools`, `tool_choice`, `parallel_tool_calls`, and
the messages of a conversation with tool calls in it (assistant `tool_calls`, `role: "tool"`
results), validated against hostile lists so a bad one gets a 400 naming it.

A request's tool use is a `ToolUse`: the functions offered (OpenAI's `{"type": "function",
"function": {name, description, parameters}}`, as transformers' chat templates take them) and
what the answer may or must do with them. `tool_choice` "none" keeps the tools out of the
prompt and parses no calls (OpenAI's meaning: the model must not call one).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import RequestError, shown

MAX_TOOLS = 128  # OpenAI's own bound on a tools list
MAX_TOOLS_BYTES = 256 * 1024  # the whole list as JSON: each schema is compiled into a grammar
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for a function's name
CHOICES = ("none", "auto", "required")


@dataclass(frozen=True)
class ToolUse:
    """The functions a request offers, and what the answer may do with them.

    `choice`: "auto" (text or calls, the model decides), "required" (one call or more), or one
    function's name (exactly that one). `parallel`: more than one call per answer allowed."""

    tools: tuple[dict[str, Any], ...] = ()
    choice: str = "auto"
    parallel: bool = True
    names: tuple[str, ...] = field(default=())

    @property
    def active(self) -> bool:
        """Whether the tools go into the prompt and calls are parsed from the answer."""
        return bool(self.tools)

    @property
    def forced(self) -> bool:
        """Whether the answer must be a call (constrained decoding: its arguments validate)."""
        return self.active and self.choice != "auto"

    def offered(self) -> list[dict[str, Any]]:
        """The functions a forced answer may call: the named one, or all."""
        if self.choice in ("auto", "required"):
            return list(self.tools)
        return [t for t in self.tools if t["function"]["name"] == self.choice]


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise RequestError(f'{where} must be {{"type": "function", "function": {{name, parameters}}}}', where)
    function = tool["function"]
    name = function.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        message = f"{where}.function.name must be 1 to 64 letters, digits, _ or -, not {shown(name)}"
        raise RequestError(message, f"{where}.function.name")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise RequestError(f"{where}.function.description must be a string", f"{where}.function.description")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        message = f"{where}.function.parameters must be a JSON schema of an object, not {shown(parameters)}"
        raise RequestError(message, f"{where}.function.parameters")
    # Every key present: chat templates read `description` and `parameters.properties` unguarded.
    parameters = {"properties": {}, **parameters}
    return {"type": "function", "function": {"name": name, "description": description or "", "parameters": parameters}}


def _choice(choice: Any, names: tuple[str, ...]) -> str:
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice not in CHOICES:
            raise RequestError(f"tool_choice must be one of {', '.join(CHOICES)} or a function", "tool_choice")
        if choice == "required" and not names:
            raise RequestError('tool_choice "required" needs tools', "tool_choice")
        return choice
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        message = 'tool_choice names a function as {"type": "function", "function": {"name": ...}}'
        raise RequestError(message, "tool_choice")
    if name not in names:
        raise RequestError(f"tool_choice names {shown(name)}, which is not among the tools", "tool_choice")
    return name


def parse_tool_use(body: dict[str, Any]) -> ToolUse:
    """The request's `tools`, `tool_choice` and `parallel_tool_calls` (RequestError names a bad one)."""
    tools = body.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise RequestError(f"tools must be a list of at most {MAX_TOOLS} functions", "tools")
    try:
        size = len(json.dumps(tools))
    except (ValueError, RecursionError):
        raise RequestError("tools are nested too deeply", "tools") from None
    if size > MAX_TOOLS_BYTES:
        raise RequestError(f"tools take more than {MAX_TOOLS_BYTES} bytes as JSON", "tools")
    parsed = tuple(_tool(tool, f"tools[{index}]") for index, tool in enumerate(tools))
    names = tuple(t["function"]["name"] for t in parsed)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RequestError(f"tools name {', '.join(twice)} more than once", "tools")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise RequestError("parallel_tool_calls must be true or false", "parallel_tool_calls")
    choice = _choice(body.get("tool_choice"), names)
    if choice == "none":
        return ToolUse(choice="none", parallel=parallel)
    return ToolUse(parsed, choice, parallel, names)


def _arguments(arguments: Any, where: str) -> dict[str, Any]:
    """A call's arguments as the chat templates want them (an object; OpenAI sends JSON text)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise RequestError(f"{where} is not a JSON object", where) from None
    if not isinstance(arguments, dict):
        raise RequestError(f"{where} must be a JSON object (or its text)", where)
    return arguments


def assistant_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls`, with arguments as objects."""
    if not isinstance(calls, list) or not calls or len(calls) > MAX_TOOLS:
        raise RequestError(f"{where} must be a non-empty list of calls", where)
    out = []
    for index, call in enumerate(calls):
        at = f"{where}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RequestError(f"{at} must be {{id, type: function, function: {{name, arguments}}}}", at)
        call_id = call.get("id", "")
        if not isinstance(call_id, str):
            raise RequestError(f"{at}.id must be a string", f"{at}.id")
        arguments = _arguments(function.get("arguments", {}), f"{at}.function.arguments")
        out.append({"id": call_id, "type": "function", "function": {"name": function["name"], "arguments": arguments}})
    return out
