"""Answers in OpenAI's shapes: one JSON body, or server-sent events (`stream`) in OpenAI's chunk
format ending in `data: [DONE]`, tool calls as OpenAI streams them (`Shape` makes the bodies)."""

from __future__ import annotations

import logging
from contextlib import aclosing
from typing import Any

from aiohttp import web

from ..errors import PeerError
from .answer import Answer
from .errors import error_body
from .replies import DONE, failure_event
from .toolcalls import ToolCall

log = logging.getLogger(__name__)


class OpenAIWriter:
    """Writes a completion's answer, whole or streamed, in OpenAI's shapes."""

    def refusal(
        self, status: int, message: str, kind: str, code: str | None = None, param: str | None = None
    ) -> web.Response:
        return web.json_response(error_body(message, kind, code, param), status=status)

    async def write(self, answer: Answer) -> tuple[web.StreamResponse, str]:
        if answer.asked.stream:
            return await self._stream(answer)
        return await self._whole(answer)

    async def _whole(self, answer: Answer) -> tuple[web.Response, str]:
        content: list[str] = [answer.echo]
        calls: list[ToolCall] = []
        try:
            async with aclosing(answer.pieces()) as pieces:
                async for piece in pieces:
                    content.append(piece.content)
                    calls += piece.calls
        except PeerError as error:
            log.warning("completion failed: %s", error)
            return self.refusal(502, f"generation failed: {error}", "server_error", "generation_failed"), "failed"
        body = answer.shape.whole("".join(content), len(answer.echo), calls)
        return web.json_response(body), "completed"

    async def _stream(self, answer: Answer) -> tuple[web.StreamResponse, str]:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            await response.prepare(answer.request)
            return response, await self._events(response, answer)
        except ConnectionResetError:  # the client went away between two writes: as a cancel
            await answer.tokens.aclose()
            return response, "cancelled"

    async def _events(self, response: web.StreamResponse, answer: Answer) -> str:
        """Write the stream's events; the outcome."""
        shape, completion = answer.shape, answer.completion
        usage: dict[str, Any] = {"usage": None} if answer.asked.include_usage else {}
        echo, opened = answer.echo, False

        async def opening() -> None:  # the echoed prompt, with its own log-probabilities when asked
            nonlocal opened
            if not opened:
                picks = shape.prompt_picks()
                await response.write(
                    shape.chunk(echo if shape.kind == "text" else "", first=True, picks=picks, **usage)
                )
                opened = True

        if answer.asked.sampling.prompt_logprobs < 0:
            await opening()  # at once; else when the prompt's pass has scored it
        offset, calls = len(echo), 0  # characters written so far; tool calls written so far
        try:
            async with aclosing(answer.pieces()) as pieces:
                async for piece in pieces:
                    await opening()
                    if piece.content:
                        await response.write(shape.chunk(piece.content, picks=piece.picks, offset=offset, **usage))
                        offset += len(piece.content)
                    if piece.calls:
                        await response.write(shape.call_chunks(piece.calls, calls, **usage))
                        calls += len(piece.calls)
        except PeerError as error:
            log.warning("streamed completion failed: %s", error)
            await opening()
            await response.write(failure_event(f"generation failed: {error}"))
            await response.write(DONE)
            return "failed"
        await opening()
        last = {"usage": None} if answer.asked.include_usage else {"usage": completion.usage()}
        await response.write(shape.chunk(None, completion.finish_reason, edgeshard=completion.extra(), **last))
        if answer.asked.include_usage:
            await response.write(shape.usage_chunk())
        await response.write(DONE)
        return "completed"
