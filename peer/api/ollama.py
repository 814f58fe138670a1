"""Ollama's API beside OpenAI's, on the same port, for the front ends that speak it (Open WebUI
and many more): `POST /api/chat`, `POST /api/generate` (NDJSON streams, `stream` true unless
said), `GET /api/tags`, `POST /api/show`, `GET /api/version`.

A request is translated into the OpenAI request it means and goes through the same validation,
admission, fail-over and telemetry (`Api.complete`); only the answer is written in Ollama's
shape, and errors as Ollama's `{"error": "..."}`. `options` takes `temperature` (Ollama's
default 0.8), `top_p`, `top_k`, `seed`, `num_predict` and `stop`; `format` is "json" or a JSON
schema, through the same constrained decoding as `response_format`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..errors import PeerError
from ..model.text import TextStream
from .errors import RequestError
from .handlers import Api, chat_prompt_ids, read_json
from .replies import Shape
from .schemas import GenerationRequest, check_model, parse_chat_request, parse_text_request

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
    if body.get("tools"):  # as on the OpenAI route: refused by name, never dropped
        raise RequestError("tools (function calling) are not served yet", "tools")
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
                "template": "",
                "details": entry["details"],
                "model_info": info,
                "capabilities": ["completion"],
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
            ids = await asyncio.to_thread(chat_prompt_ids, backend.tokenizer(), chat.messages)
            asked = _top_k(chat, body)
        except RequestError as error:
            self.api.telemetry.count("invalid")
            return _error(error.status, str(error))
        return _ollama_error(await self.api.complete(request, "chat", asked, ids, "", self._writer("chat")))

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
                ids = await asyncio.to_thread(chat_prompt_ids, backend.tokenizer(), asked.messages)
            asked = _top_k(asked, body)
        except RequestError as error:
            self.api.telemetry.count("invalid")
            return _error(error.status, str(error))
        return _ollama_error(await self.api.complete(request, "text", asked, ids, "", self._writer("generate")))

    def _writer(self, route: str) -> Any:
        async def write(
            request: web.Request,
            asked: GenerationRequest,
            shape: Shape,
            text: TextStream,
            tokens: AsyncGenerator[int, None],
            _echo: str,
        ) -> tuple[web.StreamResponse, str]:
            completion = shape.completion
            started = time.monotonic()

            def piece(content: str, done: bool) -> dict[str, Any]:
                body: dict[str, Any] = {"model": asked.model, "created_at": _now()}
                body |= (
                    {"message": {"role": "assistant", "content": content}} if route == "chat" else {"response": content}
                )
                body["done"] = done
                if done:
                    now = time.monotonic()
                    first = ((completion.timing or {}).get("ttft_ms") or 0) / 1000
                    body |= {
                        "done_reason": completion.finish_reason,
                        "total_duration": int((now - completion.admitted) * 1e9),
                        "load_duration": 0,
                        "prompt_eval_count": completion.prompt_tokens,
                        "prompt_eval_duration": int(first * 1e9),
                        "eval_count": len(completion.token_ids),
                        "eval_duration": int(max(now - started - first, 0) * 1e9),
                    }
                return body

            stream: web.StreamResponse | None = None
            if asked.stream:
                stream = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
                await stream.prepare(request)
            try:
                async for token in tokens:
                    new = text.add(token)
                    if new and stream is not None:
                        await stream.write((json.dumps(piece(new, False)) + "\n").encode())
                    if text.stopped:
                        completion.finish_reason = "stop"
                        break
            except ConnectionResetError:  # the client went away between two writes: a cancel
                await tokens.aclose()
                return stream or _error(499, "the client went away"), "cancelled"
            except PeerError as error:
                if stream is None:
                    return _error(502, f"generation failed: {error}"), "failed"
                await stream.write((json.dumps({"error": f"generation failed: {error}"}) + "\n").encode())
                return stream, "failed"
            finally:
                await tokens.aclose()
            self.api.summarize_timing(completion)
            if stream is None:
                return web.json_response(piece(text.text, True)), "completed"
            tail = text.text[len(text.shown) :]
            last = piece(tail if not text.stopped else "", True)
            await stream.write((json.dumps(last) + "\n").encode())
            return stream, "completed"

        return write


def _ollama_error(response: web.StreamResponse) -> web.StreamResponse:
    """An OpenAI-shaped refusal from `Api.complete` in Ollama's shape ({"error": message})."""
    if isinstance(response, web.Response) and response.status >= 400 and response.content_type == "application/json":
        try:
            message = json.loads(response.text or "{}")["error"]["message"]
        except (KeyError, TypeError, ValueError):
            return response
        fixed = _error(response.status, message)
        if "Retry-After" in response.headers:
            fixed.headers["Retry-After"] = response.headers["Retry-After"]
        return fixed
    return response


def mount_both(api: Api, app: web.Application) -> None:
    """OpenAI's routes (with the API key check over every route) and Ollama's, on one app."""
    api.add_routes(app)
    Ollama(api).add_routes(app)
