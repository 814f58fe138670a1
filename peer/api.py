"""The user API on `--api-listen`: OpenAI-compatible chat completions, models, and /v1/status.

`POST /v1/chat/completions` takes messages, `max_tokens` (or `max_completion_tokens`),
`temperature`, `top_p`, `seed`, `stop` and `stream`; with `stream` the answer is server-sent
events in OpenAI's chunk format ending in `data: [DONE]`. The request's seed is fixed at
arrival (a random one when absent), so a fail-over replay continues the same sample. Every
response carries an `edgeshard` object (plan id, token ids, fail-overs) beside OpenAI's fields;
clients that do not know it ignore it.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import PeerError
from .failover import NoRouteError, Recovery, generate_with_failover
from .sampling import SamplingParams
from .text import TextStream, chat_ids, stop_token_ids

if TYPE_CHECKING:
    from .node import PeerNode

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 512
ROUTE_WAIT_S = 30.0  # how long a request waits for a ready plan before answering 503


class RequestError(ValueError):
    """The request body is not acceptable (HTTP 400)."""


def _error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": code, "param": None}}, status=status)


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

    def extra(self) -> dict[str, Any]:
        return {
            "layout_id": self.layout_id,
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


class Api:
    """The HTTP handlers, bound to one peer."""

    def __init__(self, node: PeerNode) -> None:
        self.node = node

    def add_routes(self, app: web.Application) -> None:
        """Mount /v1/models, /v1/chat/completions and /v1/status."""
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/status", self.status)

    @property
    def model_name(self) -> str:
        spec = self.node.config.model
        return "smollm2-135m-instruct" if spec == "default" else spec.rstrip("/").rsplit("/", 1)[-1]

    async def models(self, _request: web.Request) -> web.Response:
        """GET /v1/models."""
        entry = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "edgeshard"}
        return web.json_response({"object": "list", "data": [entry]})

    async def status(self, _request: web.Request) -> web.Response:
        """GET /v1/status."""
        return web.json_response(self.node.status())

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        try:
            chat = parse_chat_request(await request.json(), self.model_name)
        except (RequestError, ValueError) as error:
            return _error(400, str(error), "invalid_request_error")
        source = self.node.source
        tokenizer = source.tokenizer()
        ids = chat_ids(tokenizer, chat.messages)
        room = self.node.config.context - len(ids)
        if room < 1:
            message = f"the prompt has {len(ids)} tokens; the context holds {self.node.config.context}"
            return _error(400, message, "invalid_request_error", "context_length_exceeded")
        max_tokens = min(chat.max_tokens or DEFAULT_MAX_TOKENS, room)
        try:
            route = await self.node.wait_route(ROUTE_WAIT_S)
        except NoRouteError as error:
            return _error(503, f"the cluster is not ready: {error}", "service_unavailable", "not_ready")
        completion = Completion(prompt_tokens=len(ids), layout_id=route.layout_id)
        text = TextStream(tokenizer, chat.stops)
        tokens = self._tokens(ids, chat, max_tokens, completion)
        if chat.stream:
            return await self._stream(request, chat, completion, text, tokens)
        try:
            async for token in tokens:
                text.add(token)
                if text.stopped:
                    completion.finish_reason = "stop"
                    break
        except PeerError as error:
            log.warning("chat completion failed: %s", error)
            return _error(502, f"generation failed: {error}", "server_error", "generation_failed")
        finally:
            await tokens.aclose()
        body = {
            "id": completion.id,
            "object": "chat.completion",
            "created": completion.created,
            "model": chat.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text.text},
                    "finish_reason": completion.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": completion.usage(),
            "edgeshard": completion.extra(),
        }
        return web.json_response(body)

    async def _tokens(
        self, ids: list[int], chat: ChatRequest, max_tokens: int, completion: Completion
    ) -> AsyncGenerator[int, None]:
        """Token ids, recorded in `completion`; an end-of-sequence token sets finish "stop"."""
        node = self.node
        stop_ids = stop_token_ids(node.source.config)
        async for token in generate_with_failover(
            node.origin,
            node.wait_route,
            ids,
            chat.sampling,
            max_tokens,
            stop_ids,
            recoveries=completion.recoveries,
        ):
            completion.token_ids.append(token)
            yield token
        if len(completion.token_ids) < max_tokens:
            completion.finish_reason = "stop"

    async def _stream(
        self,
        request: web.Request,
        chat: ChatRequest,
        completion: Completion,
        text: TextStream,
        tokens: AsyncGenerator[int, None],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            chunk = {
                "id": completion.id,
                "object": "chat.completion.chunk",
                "created": completion.created,
                "model": chat.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                **extra,
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        try:
            async for token in tokens:
                new = text.add(token)
                if new:
                    await send({"content": new})
                if text.stopped:
                    completion.finish_reason = "stop"
                    break
        except PeerError as error:
            log.warning("streamed chat completion failed: %s", error)
            failure = {"error": {"message": f"generation failed: {error}", "type": "server_error"}}
            await response.write(f"data: {json.dumps(failure)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            return response
        finally:
            await tokens.aclose()
        tail = text.text[len(text.shown) :]  # text held back while it could still become a stop string
        if tail and not text.stopped:
            await send({"content": tail})
        await send({}, completion.finish_reason, usage=completion.usage(), edgeshard=completion.extra())
        await response.write(b"data: [DONE]\n\n")
        return response
