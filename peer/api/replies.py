"""The bodies of a completion's answer, whole or streamed, in OpenAI's two shapes: chat
(`chat.completion`, a message or a delta per choice) and text (`text_completion`, text per
choice). Pure: the handlers write what these return."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..pipeline.timing import Predicted
from ..wire import Sampled
from .logprobs import TokenTexts, chat_entries, text_lists
from .schemas import Completion
from .toolcalls import ToolCall

Kind = Literal["chat", "text"]
DONE = b"data: [DONE]\n\n"
PREFIXES = ("", "http://", "https://")  # a route names a stage by its peer address, or a URL of it


@dataclass(frozen=True)
class Shape:
    """How one kind of completion is written."""

    kind: Kind
    model: str
    completion: Completion
    texts: TokenTexts | None = None  # the tokens' texts, when the request asked for log-probabilities

    def _logprobs(self, picks: Sequence[Sampled], offset: int) -> dict[str, Any] | None:
        """A choice's `logprobs` in this kind's shape (None when not asked for)."""
        if self.texts is None:
            return None
        if self.kind == "chat":
            return {"content": chat_entries(self.texts, picks), "refusal": None}
        return text_lists(self.texts, picks, offset)

    def prompt_picks(self) -> list[Sampled]:
        """The echoed prompt's own log-probabilities (the first token has none), when asked for.
        A fail-over's replay scores its answer so far too: only the prompt's are kept."""
        return self.completion.prompt_logprobs[: self.completion.prompt_tokens]

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.completion.id, "object": obj, "created": self.completion.created, "model": self.model}

    def whole(self, text: str, echoed: int = 0, calls: Sequence[ToolCall] = ()) -> dict[str, Any]:
        """The non-streamed response body (`echoed`: characters of prompt that begin `text`;
        `calls`: the tool calls the answer made)."""
        completion = self.completion
        prompt = self.prompt_picks()
        logprobs = self._logprobs(prompt + completion.logprobs, 0 if prompt else echoed)
        choice: dict[str, Any] = {"index": 0, "finish_reason": completion.finish_reason, "logprobs": logprobs}
        if self.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text if text or not calls else None}
            if calls:
                choice["message"]["tool_calls"] = [call.openai() for call in calls]
            body = self._base("chat.completion")
        else:
            choice["text"] = text
            body = self._base("text_completion")
        return body | {"choices": [choice], "usage": completion.usage(), "edgeshard": completion.extra()}

    def chunk(
        self,
        text: str | None,
        finish: str | None = None,
        first: bool = False,
        picks: Sequence[Sampled] = (),
        offset: int = 0,
        **extra: Any,
    ) -> bytes:
        """One server-sent event: a piece of text (None: no content, as the closing chunk), with
        the log-probabilities of the tokens `picks` that made it, their text at `offset`."""
        logprobs = self._logprobs(picks, offset) if picks else None
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": logprobs}
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
            body = self._base("chat.completion.chunk")
        else:
            choice["text"] = text or ""
            body = self._base("text_completion")
        return event(body | {"choices": [choice], **extra})

    def call_chunks(self, calls: Sequence[ToolCall], first: int, **extra: Any) -> bytes:
        """Tool calls as OpenAI streams them: per call, a delta that opens it (index, id, name)
        and one with its arguments; `first`: the index of the first of `calls`."""
        events = []
        for index, call in enumerate(calls, first):
            opened = call.openai(index)
            opened["function"] = {"name": call.name, "arguments": ""}
            arguments = {"index": index, "function": {"arguments": call.arguments}}
            for delta in (opened, arguments):
                choice = {"index": 0, "finish_reason": None, "logprobs": None, "delta": {"tool_calls": [delta]}}
                events.append(event(self._base("chat.completion.chunk") | {"choices": [choice], **extra}))
        return b"".join(events)

    def usage_chunk(self) -> bytes:
        """The last chunk of `stream_options.include_usage`: no choices, the usage."""
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return event(self._base(obj) | {"choices": [], "usage": self.completion.usage()})


def event(body: dict[str, Any]) -> bytes:
    """A JSON body as one server-sent event."""
    return f"data: {json.dumps(body)}\n\n".encode()


def failure_event(message: str) -> bytes:
    """A failure in the middle of a stream (the status line went out long ago)."""
    return event({"error": {"message": message, "type": "server_error", "param": None, "code": "generation_failed"}})


def timing_context(status: dict[str, Any], layout_id: str) -> tuple[dict[str, str], Predicted | None]:
    """Device names by stage URL, and the planner's per-stage figures, from the status document's
    plan when it is the layout the reply ran on."""
    plan = status.get("plan") or {}
    if plan.get("layout_id") != layout_id:
        return {}, None
    stages = plan.get("stages") or []
    names = {prefix + s["address"]: s["device"] for s in stages if s.get("address") for prefix in PREFIXES}
    try:
        compute = tuple(float(s["predicted_compute_ms"]) for s in stages)
        transfer = tuple(float(s["predicted_transfer_ms"]) for s in stages)
    except (KeyError, TypeError, ValueError):
        return names, None
    return names, Predicted(compute, transfer)
