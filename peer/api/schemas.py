"""Shapes of the OpenAI-compatible API: request validation and response bodies (pure)."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..pipeline.failover import Recovery
from ..wire import SamplingParams

DEFAULT_MAX_TOKENS = 512


def served_model_name(spec: str) -> str:
    """The model id the API shows for a model setting ('default' or a path)."""
    return "smollm2-135m-instruct" if spec == "default" else spec.rstrip("/").rsplit("/", 1)[-1]


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}


class RequestError(ValueError):
    """The request body is not acceptable (HTTP 400)."""


@dataclass
class ChatRequest:
    """A validated chat completion request."""

    messages: list[dict[str, str]]
    max_tokens: int | None
    sampling: SamplingParams
    stops: list[str]
    stream: bool
    model: str


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(f"{key}: a number from {low} to {high}")
    return float(value)


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": "..."}]
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(p, str) for p in parts):
            return "".join(str(p) for p in parts)
    raise RequestError("messages[].content: a string or a list of text parts")


def parse_chat_request(body: Any, default_model: str) -> ChatRequest:
    """Validate an OpenAI chat completion body (RequestError names the field)."""
    if not isinstance(body, dict):
        raise RequestError("the body is a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: a non-empty list")
    parsed = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in {"system", "user", "assistant", "developer"}:
            raise RequestError("messages[].role: system, user or assistant")
        role = "system" if message["role"] == "developer" else message["role"]
        parsed.append({"role": role, "content": _content(message)})
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise RequestError("max_tokens: a positive integer")
    if body.get("n", 1) != 1:
        raise RequestError("n: only 1 is supported")
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbits(32)
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise RequestError("seed: an integer")
    stop = body.get("stop") or []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise RequestError("stop: a string or a list of up to 4 strings")
    sampling = SamplingParams(
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 1e-9, 1.0),
        seed=seed % 2**32,  # the wire carries 32-bit seeds
    )
    model = body.get("model") or default_model
    if not isinstance(model, str):
        raise RequestError("model: a string")
    return ChatRequest(parsed, limit, sampling, stops, bool(body.get("stream", False)), model)


@dataclass
class Completion:
    """What a generation produced, for the response bodies."""

    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))
    prompt_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    layout_id: str = ""
    recoveries: list[Recovery] = field(default_factory=list)
    queued_s: float = 0.0  # waited for a session slot (admission)

    def extra(self) -> dict[str, Any]:
        return {
            "layout_id": self.layout_id,
            "queued_s": round(self.queued_s, 3),
            "token_ids": self.token_ids,
            "failovers": [asdict(r) for r in self.recoveries],
        }

    def usage(self) -> dict[str, int]:
        count = len(self.token_ids)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": count,
            "total_tokens": self.prompt_tokens + count,
        }
