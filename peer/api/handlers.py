"""The user API on `--api-listen`: OpenAI-compatible completions, models, and /v1/status.

`POST /v1/chat/completions` takes messages, `POST /v1/completions` a prompt (text or token ids;
`echo` too); both take `max_tokens` (or `max_completion_tokens`), `temperature`, `top_p`, `seed`,
`stop`, `n` (1 only), `stream` and `stream_options.include_usage`; with `stream` the answer is
server-sent events in OpenAI's chunk format ending in `data: [DONE]`. The request's seed is
fixed at arrival (a random one when absent), so a fail-over replay continues the same sample.
Every response carries an `edgeshard` object (layout id, token ids, fail-overs, and `timing`:
where each token's time went, per stage and per link, beside the planner's prediction) beside
OpenAI's fields; clients that do not know it ignore it. Every outcome is counted (`Telemetry`).

Every malformed request gets a 4xx in OpenAI's error shape (`schemas` says what is refused),
never a 500; with an `api_key` every route wants `Authorization: Bearer <key>`, the header
OpenAI's clients send their api key in (the dashboard's page, and its data for a browser that
holds its cookie, excepted: `dashboard`). Without a key the API is on loopback (the daemon
refuses otherwise) and answers only requests addressed to a loopback name, so a web page that
points its own domain at 127.0.0.1 (DNS rebinding) cannot use or read it.

The handlers serve any `Backend`: the daemon's node is one; a test can bring another.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict, replace
from typing import Any

from aiohttp import web
from jinja2 import TemplateError  # what transformers' chat templates raise (torch requires jinja2)
from transformers import PreTrainedTokenizerBase

from ..model.grammar import GrammarError, Grammars
from ..model.text import TextStream
from ..pipeline.failover import NoRouteError, generate_with_failover
from ..pipeline.timing import summarize
from ..wire import Constraint
from .admission import Admission, QueueFull, ShuttingDown, TokenMeter
from .answer import Answer, Writer
from .backend import Backend
from .dashboard import mount_dashboard
from .errors import RequestError
from .events import ClusterEvents
from .guard import guard, refuse
from .logprobs import TokenTexts
from .metrics import Metrics
from .openai_writer import OpenAIWriter
from .replies import Kind, Shape, timing_context
from .schemas import (
    MAX_BODY_BYTES,
    ChatRequest,
    Completion,
    GenerationRequest,
    TextRequest,
    answer_room,
    check_model,
    parse_chat_request,
    parse_json,
    parse_text_request,
    too_large,
)
from .telemetry import ReplyRecord, Telemetry
from .toolcalls import CallParser, chat_prompt, dialect_of, tool_grammar
from .tools import ToolUse

log = logging.getLogger(__name__)

ROUTE_WAIT_S = 30.0  # how long a request waits for a ready plan before answering 503


async def read_json(request: web.Request) -> Any:
    """The body's JSON value; RequestError when it is too large or not strict JSON."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise too_large()
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:  # a chunked body past aiohttp's client_max_size
        raise too_large() from None
    return parse_json(raw)


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, chat: ChatRequest) -> list[int]:
    """The conversation's prompt, with the tools it offers; a forced call's grammar set on `chat`."""
    try:
        if chat.tools.forced:
            chat.grammar = tool_grammar(chat.tools, dialect_of(tokenizer).syntax)
        return chat_prompt(tokenizer, chat.messages, chat.tools)
    except ValueError as error:  # llguidance's refusal of a tool's schema as grammar text
        raise RequestError(f"tools: {error}", "tools", "invalid_schema") from None
    except RecursionError:  # a schema nested past what the template or the grammar can walk
        raise RequestError("tools: a schema is nested too deeply", "tools", "invalid_schema") from None
    except TemplateError as error:  # e.g. a template that wants user and assistant to alternate
        raise RequestError(f"the model's chat template refuses these messages: {error}", "messages") from None


def _text_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[int]) -> tuple[list[int], str]:
    """A text request's prompt as token ids, and as text (for `echo`)."""
    if isinstance(prompt, str):
        return [int(i) for i in tokenizer.encode(prompt)], prompt
    if max(prompt) >= len(tokenizer):
        raise RequestError(f"prompt holds a token id beyond the vocabulary ({len(tokenizer)})", "prompt")
    return prompt, str(tokenizer.decode(prompt))


class Api:
    """The HTTP handlers, bound to one backend."""

    def __init__(
        self,
        backend: Backend,
        admission: Admission | None = None,
        *,
        api_key: str = "",
        grammars: Grammars | None = None,
    ) -> None:
        self.backend = backend
        self.grammars = grammars  # checks response_format's grammars (None: constrained answers refused)
        self._texts: TokenTexts | None = None
        self.admission = admission or Admission(capacity=8, queue_bound=32)
        self.meter = TokenMeter()
        self.api_key = api_key
        self.telemetry = Telemetry()
        self.events = ClusterEvents(backend.status, self.telemetry)

    def load(self) -> dict[str, Any]:
        """What this API carries now: sessions generating and waiting, refusals, tokens/s."""
        admission = self.admission
        return {
            "generating": admission.active,
            "queued": admission.queued,
            "capacity": admission.capacity,
            "queue_bound": admission.queue_bound,
            "refused": admission.refused,
            "measured_tps": round(self.meter.rate(), 2),
            "tokens": self.meter.total,
            "prompt_tokens": self.telemetry.prompt_tokens,
            "cached_prompt_tokens": self.telemetry.cached_tokens,
        }

    def add_routes(self, app: web.Application) -> None:
        """Mount /v1/models, the completions, and /v1/status, and the middleware that checks the
        API key on every route of `app` (the API has an app of its own)."""
        app.middlewares.append(guard(self.api_key, self.telemetry))
        self.events.add_to(app)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.text_completions)
        app.router.add_get("/v1/status", self.status)
        mount_dashboard(app, self)  # GET /, /v1/dashboard, /v1/dashboard/events
        app.router.add_get("/metrics", Metrics(self.backend.status, self.telemetry, self.events, self.meter).endpoint)

    async def models(self, _request: web.Request) -> web.Response:
        """GET /v1/models."""
        entry = {"id": self.backend.model_name, "object": "model", "created": 0, "owned_by": "edgeshard"}
        return web.json_response({"object": "list", "data": [entry]})

    async def status(self, _request: web.Request) -> web.Response:
        """GET /v1/status."""
        return web.json_response(self.backend.status())

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        backend = self.backend
        try:
            chat = parse_chat_request(await read_json(request), backend.model_name, backend.context)
            check_model(chat.model, backend.model_name)
            # Templating and tokenising a long conversation takes milliseconds: not on the loop.
            ids = await asyncio.to_thread(chat_prompt_ids, backend.tokenizer(), chat)
        except RequestError as error:
            self.telemetry.count("invalid")
            return refuse(error)
        return await self.complete(request, "chat", chat, ids, "")

    async def text_completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions."""
        backend = self.backend
        try:
            text: TextRequest = parse_text_request(await read_json(request), backend.model_name, backend.context)
            check_model(text.model, backend.model_name)
            ids, prompt = await asyncio.to_thread(_text_prompt, backend.tokenizer(), text.prompt)
        except RequestError as error:
            self.telemetry.count("invalid")
            return refuse(error)
        return await self.complete(request, "text", text, ids, prompt if text.echo else "")

    async def complete(
        self,
        request: web.Request,
        kind: Kind,
        asked: GenerationRequest,
        ids: list[int],
        echo: str,
        writer: Writer | None = None,
    ) -> web.StreamResponse:
        """Admit, generate and answer a validated request, whole or streamed, in OpenAI's shapes
        or `writer`'s (Ollama's)."""
        backend = self.backend
        writer = writer or OpenAIWriter()
        tools = asked.tools if isinstance(asked, ChatRequest) else ToolUse()
        try:
            max_tokens = answer_room(len(ids), asked.max_tokens, backend.context)
            if asked.grammar is not None:
                await self._check_grammar(asked.grammar, "tools" if tools.forced else "response_format")
        except RequestError as error:
            self.telemetry.count("invalid")
            return writer.refusal(error.status, str(error), "invalid_request_error", error.code, error.param)
        try:
            async with self.admission.slot() as queued_s:
                try:
                    route = await backend.wait_ready_layout(ROUTE_WAIT_S)
                except NoRouteError as error:
                    self.telemetry.count("not_ready")
                    message = f"the cluster is not ready: {error}"
                    return writer.refusal(503, message, "service_unavailable", "not_ready")
                completion = Completion(prompt_tokens=len(ids), layout_id=route.layout_id, queued_s=queued_s)
                if kind == "text":
                    completion.id = "cmpl-" + completion.id.removeprefix("chatcmpl-")
                shape = Shape(
                    kind, asked.model, completion, self._token_texts() if asked.sampling.logprobs >= 0 else None
                )
                text = TextStream(backend.tokenizer(), asked.stops)
                tokens = self._tokens(ids, asked, max_tokens, completion)
                calls = CallParser(tools.names) if tools.active else None
                answer = Answer(request, asked, shape, text, tokens, echo, self.summarize_timing, calls)
                outcome = "cancelled"  # unless it gets further: the client went away
                try:
                    response, outcome = await writer.write(answer)
                    return response
                except Exception:  # a fault of ours (not the client going away): counted as one
                    outcome = "failed"
                    raise
                finally:
                    self._finish(kind, completion, outcome, queued_s)
        except QueueFull as full:
            self.telemetry.count("queue_full")
            response = writer.refusal(429, f"the cluster is busy: {full}", "rate_limit_exceeded", "queue_full")
            response.headers["Retry-After"] = str(full.retry_after_s)
            return response
        except ShuttingDown as stopping:
            self.telemetry.count("draining")
            return writer.refusal(503, str(stopping), "service_unavailable", "shutting_down")

    async def _check_grammar(self, grammar: str, param: str) -> None:
        """RequestError (naming `param`, what the grammar came from) unless the grammar compiles
        for the model's tokenizer, within bounds."""
        if self.grammars is None:
            raise RequestError("this server cannot constrain answers", param, "unsupported_parameter")
        try:  # compiling takes milliseconds, a large schema more: not on the loop
            await asyncio.to_thread(self.grammars.check, grammar)
        except GrammarError as error:  # llguidance's first line says what; the rest shows the grammar
            raise RequestError(f"{param}: {str(error).splitlines()[0]}", param, "invalid_schema") from None

    def _token_texts(self) -> TokenTexts:
        if self._texts is None:
            self._texts = TokenTexts(self.backend.tokenizer())
        return self._texts

    def _finish(self, kind: Kind, completion: Completion, outcome: str, queued_s: float) -> None:
        """Record how a generating request ended."""
        timing = completion.timing or self.summarize_timing(completion)
        record = ReplyRecord(
            id=completion.id,
            kind=kind,
            outcome=outcome,
            finished=time.time(),
            seconds=round(time.monotonic() - completion.admitted, 3),
            queued_s=round(queued_s, 3),
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=len(completion.token_ids),
            layout_id=completion.layout_id,
            failovers=[asdict(r) for r in completion.recoveries],
            timing=timing,
            cached_tokens=completion.cached_tokens(),
            steps=completion.timings,
        )
        self.telemetry.finish(record)

    def summarize_timing(self, completion: Completion) -> dict[str, Any] | None:
        """Where the reply's time went, beside the plan's prediction (set on `completion`)."""
        try:
            # After a fail-over the reply ended on the last recovery's layout.
            layout = completion.recoveries[-1].new_layout if completion.recoveries else completion.layout_id
            names, predicted = timing_context(self.backend.status(), layout)
        except Exception:  # the status is a nicety here: the reply must not fail over it
            log.exception("no status for the reply's timing")
            names, predicted = {}, None
        completion.timing = summarize(completion.timings, names, predicted)
        return completion.timing

    async def _tokens(
        self, ids: list[int], asked: GenerationRequest, max_tokens: int, completion: Completion
    ) -> AsyncGenerator[int, None]:
        """Token ids, recorded in `completion`; an end-of-sequence token sets finish "stop"."""
        backend = self.backend
        sampling = asked.sampling
        if asked.grammar is not None:
            sampling = replace(sampling, constraint=Constraint(asked.grammar))
        async for token in generate_with_failover(
            backend.origin,
            backend.wait_ready_layout,
            ids,
            sampling,
            max_tokens,
            backend.stop_ids(),
            recoveries=completion.recoveries,
            timings=completion.timings,
            reused=completion.reused,
            reuse=asked.cache_prompt,
            logprobs=completion.logprobs,
            prompt_logprobs=completion.prompt_logprobs if sampling.prompt_logprobs >= 0 else None,
        ):
            completion.token_ids.append(token)
            self.meter.add()
            yield token
        if len(completion.token_ids) < max_tokens:
            completion.finish_reason = "stop"
