"""What a request asks of its answer's form (pure): `response_format` as a grammar, and the
log-probabilities asked for. What is not served is refused by name, never silently ignored (a
client that asked for JSON must not get free text)."""

from __future__ import annotations

from typing import Any

from ..model.grammar import GrammarError, json_grammar
from ..wire import MAX_TOP_LOGPROBS
from .errors import RequestError, is_int, shown

FORMATS = ("text", "json_object", "json_schema")


def response_grammar(response_format: Any) -> str | None:
    """The grammar `response_format` asks for (None: free text). OpenAI's shapes:
    {"type": "text"}, {"type": "json_object"}, {"type": "json_schema", "json_schema": {"name":
    ..., "schema": {...}, "strict": true}}; llama.cpp's {"type": "json_object", "schema": {...}}
    too. Whether the grammar compiles is the handler's check (it needs the tokenizer)."""
    if response_format is None:
        return None
    param = "response_format"
    if not isinstance(response_format, dict) or response_format.get("type") not in FORMATS:
        raise RequestError(f"{param} is an object whose type is one of {', '.join(FORMATS)}", param)
    kind = response_format["type"]
    if kind == "text":
        return None
    schema: Any = response_format.get("schema")  # llama.cpp's form
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise RequestError(f"{param}.json_schema must be an object with a schema", f"{param}.json_schema")
        schema = spec.get("schema", {})
        param = f"{param}.json_schema.schema"
    if schema is not None and not isinstance(schema, dict):
        raise RequestError(f"{param} must be a JSON schema object, not {shown(schema)}", param)
    try:
        return json_grammar(schema)
    except GrammarError as error:
        raise RequestError(f"{param}: {error}", param, "invalid_schema") from None


def chat_logprobs(body: dict[str, Any]) -> int:
    """-1 (none) or how many top tokens each answer token lists: OpenAI's chat `logprobs`
    (true/false) and `top_logprobs` (0..20, only with logprobs)."""
    asked, top = body.get("logprobs"), body.get("top_logprobs")
    if asked is not None and not isinstance(asked, bool):
        raise RequestError("logprobs must be true or false", "logprobs")
    if top is not None and (not is_int(top) or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise RequestError(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}", "top_logprobs")
    if top is not None and not asked:
        raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")
    return int(top or 0) if asked else -1


def text_logprobs(body: dict[str, Any]) -> int:
    """-1 (none) or the legacy completions' `logprobs`: how many top tokens (0..20) each lists
    (with `echo`, the prompt's tokens too)."""
    asked = body.get("logprobs")
    if asked is None:
        return -1
    if not is_int(asked) or not 0 <= asked <= MAX_TOP_LOGPROBS:
        raise RequestError(f"logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}", "logprobs")
    return int(asked)
