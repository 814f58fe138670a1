"""Ollama's API beside OpenAI's, on the same port, for the front ends that speak it (Open WebUI
and many more): `POST /api/chat`, `POST /api/generate` (NDJSON streams, `stream` true unless
said), `GET /api/tags`, `POST /api/show`, `GET /api/version`.

A request is translated into the OpenAI request it means and goes through the same validation,
admission, fail-over and telemetry (`Api.complete`); only the answer is written in Ollama's
shape, and errors as Ollama's `{"error": "..."}`. `options` takes `temperature` (Ollama's
default 0.8), `top_p`, `top_k`, `seed`, `num_predict` and `stop`; `format` is "json" or a JSON
schema, through the same constrained decoding as `response_format`; `tools` on /api/chat are
OpenAI's, offered as `tool_choice` "auto" (Ollama has no other), the calls answered in
`message.tool_calls`.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..errors import PeerError
from .answer import Answer
from .errors import RequestError
from .handlers import Api, chat_prompt_ids, read_json
from .schemas import GenerationRequest, check_model, parse_chat_request, parse_text_request
from .toolcalls import ToolCall

VERSION = "0.6.0"  # the Ollama API version whose shapes these are (clients check for at least this)
OPTIONS = {"temperature", "top_p", "top_k", "seed", "num_predict", "stop"}
IGNORED = {"num_ctx", "num_thread", "num_gpu", "keep_alive", "repeat_penalty", "num_keep", "mirostat"}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def openai_body(body: Any, default_temperature: float = 0.8) -> dict[str, Any]:
    """The OpenAI fields an Ollama body means (RequestError names a bad field)."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise RequestError("options must be an object", "options")
    unknown = set(options) - OPTIONS - IGNORED
    if unknown:
        raise RequestError(f"options not served: {', '.join(sorted(unknown))}", "options")
    temperature, stream = options.get("temperature"), body.get("stream")  # null: Ollama's defaults
    out: dict[str, Any] = {"temperature": default_temperature if temperature is None else temperature}
    out["stream"] = True if stream is None else stream
    for key in ("top_p", "seed", "stop"):
        if options.get(key) is not None:
            out[key] = options[key]
    predict = options.get("num_predict")
    if predict is not None and predict != -1:
        out["max_tokens"] = predict
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    elif fmt not in (None, ""):
        raise RequestError('format must be "json" or a JSON schema object', "format")
    if body.get("tools") is not None:  # Ollama's tools are OpenAI's; it has no tool_choice (auto)
        out["tools"] = body["tools"]
    return out


def _top_k(asked: GenerationRequest, body: dict[str, Any]) -> GenerationRequest:
    top_k = (body.get("options") or {}).get("top_k")
    if top_k is None:
        return asked
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 0 <= top_k < 2**31:
        raise RequestError("options.top_k must be a non-negative integer (below 2**31)", "options.top_k")
    return replace(asked, sampling=replace(asked.sampling, top_k=top_k))


class Ollama:
    """Ollama's routes over an `Api`."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/chat", self.chat)
        app.router.add_post("/api/generate", self.generate)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_post("/api/show", self.show)
        app.router.add_get("/api/version", self.version)

    def _model(self, name: Any) -> str:
        """The served model's name, from Ollama's (an optional ":latest" tag)."""
        served = self.api.backend.model_name
        if not isinstance(name, str) or not name:
            raise RequestError("model is required", "model")
        check_model(name.removesuffix(":latest"), served)
        return served

    async def version(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    def _entry(self) -> dict[str, Any]:
        name = self.api.backend.model_name
        details = {
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "",
            "quantization_level": "",
        }
        return {"name": name, "model": name, "modified_at": _now(), "size": 0, "digest": "", "details": details}

    async def tags(self, _request: web.Request) -> web.Response:
        return web.json_response({"models": [self._entry()]})

    async def show(self, request: web.Request) -> web.Response:
        try:
            body = await read_json(request)
            self._model(body.get("model") if isinstance(body, dict) else None)
        except RequestError as error:
            return _error(error.status, str(error))
        entry = self._entry()
        context = self.api.backend.context
        info = {"general.architecture": "llama", "llama.context_length": context}
        return web.json_response(
            {
                "modelfile": "",
                "parameters": "",
                "template": str(getattr(self.api.backend.tokenizer(), "chat_template", None) or ""),  # Jinja, not Go
                "details": entry["details"],
                "model_info": info,
                "capabilities": ["completion", "tools"],  # front ends offer function calling on this
            }
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """POST /api/chat: messages in, a message (or NDJSON pieces of one) out."""
        backend = self.api.backend
        try:
            body = await read_json(request)
            fields = openai_body(body)
            model = self._model(body.get("model"))
            chat = parse_chat_request(
                {**fields, "messages": body.get("messages"), "model": model}, model, backend.context
            )
            ids = await asyncio.to_thread(chat_prompt_ids, backend.tokenizer(), chat)
            asked = _top_k(chat, body)
        except RequestError as error:
            self.api.telemetry.count("invalid")
            return _error(error.status, str(error))
        return await self.api.complete(request, "chat", asked, ids, "", OllamaWriter("chat"))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        """POST /api/generate: a prompt (in the chat template, with `system`, unless `raw`) in,
        a response out; an empty prompt only says the model is loaded."""
        backend = self.api.backend
        try:
            body = await read_json(request)
            fields = openai_body(body)
            model = self._model(body.get("model"))
            prompt, system, raw = body.get("prompt", ""), body.get("system"), body.get("raw", False)
            if not isinstance(prompt, str) or (system is not None and not isinstance(system, str)):
                raise RequestError("prompt and system must be strings", "prompt")
            if not isinstance(raw, bool):
                raise RequestError("raw must be true or false", "raw")
            if "tools" in fields:
                raise RequestError("tools are offered on /api/chat", "tools")
            if not prompt:
                return web.json_response(
                    {"model": model, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
                )
            asked: GenerationRequest
            if raw:
                asked = parse_text_request({**fields, "prompt": prompt, "model": model}, model, backend.context)
                asked = replace(asked, max_tokens=fields.get("max_tokens"))  # not OpenAI's 16
                ids = [int(i) for i in await asyncio.to_thread(backend.tokenizer().encode, prompt)]
            else:
                messages = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": prompt}
                ]
                asked = parse_chat_request({**fields, "messages": messages, "model": model}, model, backend.context)
                ids = await asyncio.to_thread(chat_prompt_ids, backend.tokenizer(), asked)
            asked = _top_k(asked, body)
        except RequestError as error:
            self.api.telemetry.count("invalid")
            return _error(error.status, str(error))
        return await self.api.complete(request, "text", asked, ids, "", OllamaWriter("generate"))


class OllamaWriter:
    """Writes an answer in Ollama's shapes: one JSON body, or NDJSON pieces (`stream`) ending
    in one with `done` and the counts; tool calls as `message.tool_calls` (arguments as objects)."""

    def __init__(self, route: str) -> None:
        self.route = route  # "chat" (a message) or "generate" (a response)

    def refusal(
        self, status: int, message: str, kind: str = "", code: str | None = None, param: str | None = None
    ) -> web.Response:
        return _error(status, message)

    def _body(self, answer: Answer, content: str, calls: list[ToolCall], done: bool, started: float) -> dict[str, Any]:
        completion = answer.completion
        body: dict[str, Any] = {"model": answer.asked.model, "created_at": _now()}
        if self.route == "chat":
            body["message"] = {"role": "assistant", "content": content}
            if calls:
                body["message"]["tool_calls"] = [
                    {"function": {"name": c.name, "arguments": json.loads(c.arguments)}} for c in calls
                ]
        else:
            body["response"] = content
        body["done"] = done
        if done:
            now = time.monotonic()
            first = ((completion.timing or {}).get("ttft_ms") or 0) / 1000
            body |= {
                "done_reason": "stop" if completion.finish_reason == "tool_calls" else completion.finish_reason,
                "total_duration": int((now - completion.admitted) * 1e9),
                "load_duration": 0,
                "prompt_eval_count": completion.prompt_tokens,
                "prompt_eval_duration": int(first * 1e9),
                "eval_count": len(completion.token_ids),
                "eval_duration": int(max(now - started - first, 0) * 1e9),
            }
        return body

    async def write(self, answer: Answer) -> tuple[web.StreamResponse, str]:
        started = time.monotonic()
        stream: web.StreamResponse | None = None
        if answer.asked.stream:
            stream = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await stream.prepare(answer.request)
        content: list[str] = []
        calls: list[ToolCall] = []
        try:
            async with aclosing(answer.pieces()) as pieces:
                async for piece in pieces:
                    if stream is not None:
                        line = self._body(answer, piece.content, piece.calls, False, started)
                        await stream.write((json.dumps(line) + "\n").encode())
                    content.append(piece.content)
                    calls += piece.calls
        except ConnectionResetError:  # the client went away between two writes: a cancel
            return stream or _error(499, "the client went away"), "cancelled"
        except PeerError as error:
            if stream is None:
                return _error(502, f"generation failed: {error}"), "failed"
            await stream.write((json.dumps({"error": f"generation failed: {error}"}) + "\n").encode())
            return stream, "failed"
        if stream is None:
            return web.json_response(self._body(answer, "".join(content), calls, True, started)), "completed"
        await stream.write((json.dumps(self._body(answer, "", [], True, started)) + "\n").encode())
        return stream, "completed"


def mount_both(api: Api, app: web.Application) -> None:
    """OpenAI's routes (with the API key check over every route) and Ollama's, on one app."""
    api.add_routes(app)
    Ollama(api).add_routes(app)
