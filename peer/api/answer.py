"""A generating request's answer as it comes, for the writers of each API's shapes: one token
loop (text decoded, stop strings, tool calls found, the stages' session closed however the
loop ends) that OpenAI's and Ollama's writers both read as pieces."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from ..model.text import TextStream
from ..wire import Sampled
from .replies import Shape
from .schemas import Completion, GenerationRequest
from .toolcalls import CallParser, ToolCall


@dataclass
class Piece:
    """Newly final answer: text to show (with the log-probabilities of the tokens that made it),
    and the tool calls completed."""

    content: str = ""
    picks: Sequence[Sampled] = ()
    calls: list[ToolCall] = field(default_factory=list)


@dataclass
class Answer:
    """One request's answer: the tokens as they come, and what to make of them."""

    request: web.Request
    asked: GenerationRequest
    shape: Shape
    text: TextStream
    tokens: AsyncGenerator[int, None]
    echo: str  # the prompt's text, shown before the answer (completions' `echo`)
    summarize: Callable[[Completion], Any]  # where the time went, set on the completion at the end
    calls: CallParser | None = None  # the request offered tools: calls are parsed out of the text
    made: list[ToolCall] = field(default_factory=list)
    _picks: list[Sampled] = field(default_factory=list)  # of text held back (a call may begin there)
    _taken: int = 0  # log-probabilities moved to _picks so far

    @property
    def completion(self) -> Completion:
        return self.shape.completion

    def _piece(self, new: str, final: bool = False) -> Piece | None:
        """What `new` text makes visible; the log-probabilities go with the content they made
        (a call's tokens keep none)."""
        logprobs = self.completion.logprobs
        self._picks += logprobs[self._taken :]
        self._taken = len(logprobs)
        if self.calls is None:
            content, calls = new, []
        else:
            parsed = self.calls.finish() if final else self.calls.feed(new)
            content, calls = parsed.content, parsed.calls
        self.made += calls
        if not content and not calls:
            return None
        picks: Sequence[Sampled] = self._picks if content else ()
        self._picks = []
        return Piece(content, picks, calls)

    async def pieces(self) -> AsyncGenerator[Piece, None]:
        """The answer's pieces; PeerError when generation fails. The stages' session closes
        however the loop ends (the client may go away between two pieces)."""
        completion, text = self.completion, self.text
        try:
            async for token in self.tokens:
                new = text.add(token)
                if new and (piece := self._piece(new)):
                    yield piece
                if text.stopped:
                    completion.finish_reason = "stop"
                    break
        finally:
            await self.tokens.aclose()
        tail = text.text[len(text.shown) :]  # text held back while it could still become a stop string
        if tail and not text.stopped and (piece := self._piece(tail)):
            yield piece
        if self.calls is not None and (piece := self._piece("", final=True)):
            yield piece
        if self.made and completion.finish_reason == "stop":
            completion.finish_reason = "tool_calls"
        self.summarize(completion)


class Writer(Protocol):
    """Writes answers and refusals in one API's shapes."""

    async def write(self, answer: Answer) -> tuple[web.StreamResponse, str]:
        """The response, and how the request ended ("completed", "failed", "cancelled")."""
        ...

    def refusal(
        self, status: int, message: str, kind: str, code: str | None = None, param: str | None = None
    ) -> web.Response:
        """A refusal before any answer (busy, not ready, shutting down)."""
        ...
