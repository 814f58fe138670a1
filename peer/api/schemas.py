"""Shapes of the OpenAI-compatible API: request validation and response bodies (pure).

Every refusal is a `RequestError` that carries what OpenAI's error body needs (status, the
offending field, a code), so the handler turns any malformed request into a 4xx, never a 500.
Unknown fields are ignored, as OpenAI does; fields this server does not serve are refused by
name (`structured`), never dropped.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..pipeline.failover import Recovery
from ..pipeline.timing import StepTiming
from ..wire import Sampled, SamplingParams
from .errors import RequestError, is_int, shown
from .structured import chat_logprobs, response_grammar, text_logprobs
from .tools import ToolUse, assistant_calls, parse_tool_use

DEFAULT_MAX_TOKENS = 512
MAX_BODY_BYTES = 1024 * 1024  # aiohttp's own client_max_size: a chat request is far below it
MAX_STOPS = 4
SEED_RANGE = range(-(2**63), 2**63)  # OpenAI's seed is a signed 64-bit integer
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def served_model_name(spec: str) -> str:
    """The model id the API shows for a model setting ('default' or a path)."""
    return "smollm2-135m-instruct" if spec == "default" else spec.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class GenerationRequest:
    """What every completion request says beside its prompt."""

    max_tokens: int | None
    sampling: SamplingParams
    stops: list[str]
    stream: bool
    model: str
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage
    cache_prompt: bool  # llama.cpp's field: false neither reuses cached prompt blocks nor keeps any
    grammar: str | None  # response_format's: what the answer must match (None: free text)


@dataclass
class ChatRequest(GenerationRequest):
    """A validated chat completion request."""

    messages: list[dict[str, Any]]  # role and content; an assistant's tool_calls, a tool's tool_call_id
    tools: ToolUse = field(default_factory=ToolUse)


@dataclass
class TextRequest(GenerationRequest):
    """A validated (legacy) text completion request: a prompt as text or token ids."""

    prompt: str | list[int]
    echo: bool  # the prompt's text before the answer


def too_large() -> RequestError:
    """The refusal of a body over MAX_BODY_BYTES (HTTP 413)."""
    return RequestError(f"the body is over {MAX_BODY_BYTES} bytes", code="request_too_large", status=413)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise RequestError(f"the body is not valid JSON: {text} is out of range", code="invalid_json")
    return value


def _no_constant(name: str) -> Any:
    # Python's json takes NaN and Infinity, which JSON (and every sampling parameter) has no room for.
    raise RequestError(f"the body is not valid JSON: {name} is not a JSON value", code="invalid_json")


def parse_json(raw: bytes) -> Any:
    """The body's JSON value: strict JSON only (no NaN or Infinity, no numbers that overflow)."""
    if len(raw) > MAX_BODY_BYTES:
        raise too_large()
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RequestError:
        raise
    except (ValueError, RecursionError) as error:  # bad syntax or encoding, giant integers, deep nesting
        raise RequestError(f"the body is not valid JSON: {error}", code="invalid_json") from None


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float, open_low: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    # Comparisons before float(): a giant integer does not fit in one (OverflowError); NaN fails them.
    number = not isinstance(value, bool) and isinstance(value, int | float)
    if not number or not (low < value if open_low else low <= value) or not value <= high:
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise RequestError(f"{key} must be a number in {interval}, not {shown(value)}", key)
    return float(value)


def _text(value: str, param: str) -> str:
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON): no tokenizer takes it
        raise RequestError(f"{param} is not valid Unicode text", param) from None
    return value


def _content(content: Any, param: str) -> str:
    if isinstance(content, str):
        return _text(content, param)
    if not isinstance(content, list) or not content:
        raise RequestError(f"{param} must be a string or a non-empty list of text parts", param)
    texts = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if not isinstance(part, dict) or part.get("type") != "text":
            raise RequestError(f"{where}: only text parts ({{'type': 'text', 'text': ...}}) are supported", where)
        if not isinstance(part.get("text"), str):
            raise RequestError(f"{where}.text must be a string", f"{where}.text")
        texts.append(_text(part["text"], f"{where}.text"))
    return "".join(texts)


def _message(message: Any, where: str) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise RequestError(f"{where} must be an object with role and content", where)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, not {shown(role)}", f"{where}.role")
    content = message.get("content")
    if role == "assistant" and message.get("tool_calls") is not None:  # a past call: content may be null
        calls = assistant_calls(message["tool_calls"], f"{where}.tool_calls")
        text = "" if content in (None, "") else _content(content, f"{where}.content")
        return {"role": "assistant", "content": text, "tool_calls": calls}
    parsed = {"role": ROLES[role], "content": _content(content, f"{where}.content")}
    if role == "tool":  # a call's result, fed back
        call_id = message.get("tool_call_id", "")
        if not isinstance(call_id, str):
            raise RequestError(f"{where}.tool_call_id must be a string", f"{where}.tool_call_id")
        parsed["tool_call_id"] = call_id
        if isinstance(message.get("name"), str):
            parsed["name"] = message["name"]
    return parsed


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {role, content} objects", "messages")
    return [_message(message, f"messages[{index}]") for index, message in enumerate(messages)]


def _max_tokens(body: dict[str, Any], context: int | None, least: int) -> int | None:
    # OpenAI's newer name wins when both are given.
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    limit = body.get(key)
    if limit is None:
        return None
    if not is_int(limit) or limit < least:
        kind = "a positive integer" if least else "a non-negative integer (0 only with echo)"
        raise RequestError(f"{key} must be {kind}, not {shown(limit)}", key)
    if context is not None and limit > context:
        message = f"{key} is {shown(limit)}, but this model's context holds {context} tokens (prompt and answer)"
        raise RequestError(message, key)
    return int(limit)


def _stops(stop: Any) -> list[str]:
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) for s in stops):
        raise RequestError(f"stop must be a string or a list of up to {MAX_STOPS} strings", "stop")
    return stops


def _seed(seed: Any) -> int:
    if seed is None:
        return secrets.randbits(32)  # drawn at arrival, so a fail-over replays the same sample
    if not is_int(seed) or seed not in SEED_RANGE:
        raise RequestError("seed must be an integer that fits in 64 bits (signed)", "seed")
    return int(seed) % 2**32  # the wire carries 32-bit seeds


def _options(body: dict[str, Any], default_model: str, context: int | None, least: int = 1) -> dict[str, Any]:
    """The fields every completion request shares, validated (`least`: the smallest max_tokens)."""
    limit = _max_tokens(body, context, least)
    n = body.get("n")
    if n is not None and (not is_int(n) or n != 1):
        raise RequestError(f"n must be 1 (one choice per request), not {shown(n)}", "n")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise RequestError("stream_options is an object, and only for stream: true", "stream_options")
    include_usage = (options or {}).get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise RequestError("stream_options.include_usage must be true or false", "stream_options.include_usage")
    cache_prompt = body.get("cache_prompt", True)
    if not isinstance(cache_prompt, bool):
        raise RequestError("cache_prompt must be true or false", "cache_prompt")
    sampling = SamplingParams(
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, open_low=True),
        seed=_seed(body.get("seed")),
    )
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("model must be a string", "model")
    return {
        "max_tokens": limit,
        "sampling": sampling,
        "stops": _stops(body.get("stop")),
        "stream": bool(stream),
        "model": model or default_model,
        "include_usage": include_usage,
        "cache_prompt": cache_prompt,
        "grammar": response_grammar(body.get("response_format")),
    }


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    return body


def parse_chat_request(body: Any, default_model: str, context: int | None = None) -> ChatRequest:
    """Validate an OpenAI chat completion body (RequestError names the field).

    `context`: the positions a session holds, which a max_tokens may not exceed (None: unchecked)."""
    body = _object(body)
    messages = _messages(body.get("messages"))
    tools = parse_tool_use(body)
    options = _options(body, default_model, context)
    if tools.forced and options["grammar"] is not None:
        message = "response_format cannot be combined with a tool_choice that forces a call"
        raise RequestError(message, "response_format")
    options["sampling"] = replace(options["sampling"], logprobs=chat_logprobs(body))
    return ChatRequest(messages=messages, tools=tools, **options)


def _prompt(prompt: Any) -> str | list[int]:
    """One prompt: a string, token ids, or a list holding exactly one of those."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # one prompt in a batch of one
    if isinstance(prompt, str):
        if not prompt:
            raise RequestError("prompt must not be empty", "prompt")
        return _text(prompt, "prompt")
    if isinstance(prompt, list) and prompt and all(is_int(i) and 0 <= i < 2**31 for i in prompt):
        return [int(i) for i in prompt]
    message = "prompt must be one string or one non-empty list of token ids (one prompt per request)"
    raise RequestError(message, "prompt")


def parse_text_request(body: Any, default_model: str, context: int | None = None) -> TextRequest:
    """Validate an OpenAI (legacy) completion body; max_tokens defaults to 16, as OpenAI's."""
    body = _object(body)
    prompt = _prompt(body.get("prompt"))
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise RequestError("echo must be true or false", "echo")
    if body.get("suffix") is not None:
        raise RequestError("suffix is not supported by this server", "suffix", "unsupported_parameter")
    if body.get("best_of") not in (None, 1):
        raise RequestError("best_of must be 1", "best_of")
    options = _options(body, default_model, context, least=0 if echo else 1)  # echo alone: scoring
    logprobs = text_logprobs(body)
    options["sampling"] = replace(options["sampling"], logprobs=logprobs, prompt_logprobs=logprobs if echo else -1)
    if options["max_tokens"] is None:
        options["max_tokens"] = min(16, context) if context else 16
    return TextRequest(prompt=prompt, echo=echo, **options)


def check_model(model: str, served: str) -> None:
    """Refuse a model this peer does not serve as OpenAI does (404, model_not_found)."""
    if model != served:
        message = f"The model {shown(model)} does not exist: this cluster serves {served!r}"
        raise RequestError(message, "model", "model_not_found", status=404)


def answer_room(prompt_tokens: int, max_tokens: int | None, context: int) -> int:
    """How many tokens the answer may take: max_tokens when the prompt leaves room for all of
    them (else context_length_exceeded, as OpenAI), or what is left up to DEFAULT_MAX_TOKENS."""
    room = context - prompt_tokens
    wanted = max_tokens if max_tokens is not None else 1
    if wanted > room:
        asked = f"{prompt_tokens + wanted} tokens ({prompt_tokens} in the messages, {wanted} in the completion)"
        if max_tokens is None:
            asked = f"{prompt_tokens} tokens in the messages and no room for an answer"
        message = f"This model's maximum context length is {context} tokens; the request needs {asked}"
        raise RequestError(message, "messages", "context_length_exceeded")
    return max_tokens if max_tokens is not None else min(DEFAULT_MAX_TOKENS, room)


@dataclass
class Completion:
    """What a generation produced, for the response bodies."""

    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))
    admitted: float = field(default_factory=time.monotonic)  # for durations: `created` is whole seconds
    prompt_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    layout_id: str = ""
    recoveries: list[Recovery] = field(default_factory=list)
    queued_s: float = 0.0  # waited for a session slot (admission)
    timings: list[StepTiming] = field(default_factory=list)  # every step, as the origin saw it
    reused: list[int] = field(default_factory=list)  # prompt tokens from the prefix caches, per session opened
    logprobs: list[Sampled] = field(default_factory=list)  # each answer token's, when asked for
    prompt_logprobs: list[Sampled] = field(default_factory=list)  # each prompt token's (echo), when asked for
    timing: dict[str, Any] | None = None  # their summary (`pipeline.timing.summarize`), at the end

    def extra(self) -> dict[str, Any]:
        return {
            "layout_id": self.layout_id,
            "queued_s": round(self.queued_s, 3),
            "token_ids": self.token_ids,
            "failovers": [asdict(r) for r in self.recoveries],
            "timing": self.timing,
        }

    def cached_tokens(self) -> int:
        """Prompt tokens the first session took from the stages' prefix caches (a fail-over's
        replay is the engine's business, not the request's)."""
        return self.reused[0] if self.reused else 0

    def usage(self) -> dict[str, Any]:
        count = len(self.token_ids)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": count,
            "total_tokens": self.prompt_tokens + count,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens()},
        }
