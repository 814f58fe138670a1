"""Structured output and log-probabilities on real `edgeshard-peer` processes, through OpenAI's
own client: a json_schema answer validates (jsonschema); log-probabilities come whole and
streamed; and a constrained answer, then a forced tool call, whose last stage (where its grammar
lives) is SIGKILLed mid-way fail over and end with the output the undisturbed run gave.

Five peers on loopback (bootstrap lists), 256 MiB each: the model needs three, two are spare
(one per kill).
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from .peers import Peer, agreed, client, make_peers, running, wait_until

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
        "genres": {"type": "array", "items": {"enum": ["drama", "comedy", "action"]}, "maxItems": 3},
    },
    "required": ["title", "year", "genres"],
    "additionalProperties": False,
}
FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "film", "schema": SCHEMA, "strict": True}}
ASK: Any = [{"role": "user", "content": "Recommend a film as JSON with its title, year and genres."}]


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Peer]]:
    with running(make_peers(tmp_path_factory.mktemp("structured"), 5, mdns=False)) as peers:
        yield peers


def stage_peer(peers: list[Peer], index: int) -> Peer:
    peers = [p for p in peers if p.process is not None and p.process.poll() is None]  # those not killed
    plan = agreed(peers)
    assert plan is not None
    return next(p for p in peers if p.name == plan["stages"][index]["device"])


def test_a_schema_answer_validates_and_log_probabilities_come_whole_and_streamed(peers: list[Peer]) -> None:
    api = client(stage_peer(peers, 0), 600)
    answer = api.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=80, response_format=FORMAT
    )
    assert answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), SCHEMA)

    scored = api.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=8, logprobs=True, top_logprobs=4
    )
    content = scored.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and len(content) == len(scored.model_extra["edgeshard"]["token_ids"])  # type: ignore[index]
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 4
        assert sum(math.exp(top.logprob) for top in entry.top_logprobs) <= 1 + 1e-6
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy picks the likeliest
    stream = api.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=8, logprobs=True, top_logprobs=4, stream=True
    )
    streamed = [
        e.logprob
        for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs
        for e in chunk.choices[0].logprobs.content or []
    ]
    assert streamed == pytest.approx([e.logprob for e in content], abs=1e-5)

    with pytest.raises(openai.BadRequestError) as refused:
        bad: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}
        api.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, response_format=bad)
    assert refused.value.status_code == 400


def test_a_constrained_answer_survives_a_sigkill_of_its_last_stage(peers: list[Peer]) -> None:
    entry = stage_peer(peers, 0)
    api = client(entry, 600)
    undisturbed = api.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=80, response_format=FORMAT
    )
    want = undisturbed.model_extra["edgeshard"]["token_ids"]  # type: ignore[index]
    assert len(want) > 12
    last = stage_peer(peers, -1)
    assert last is not entry, "the entry peer must survive the kill"
    stream = api.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=80, response_format=FORMAT, stream=True
    )
    text, pieces, final = "", 0, None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            pieces += 1
            if pieces == 5:
                last.signal(signal.SIGKILL)
        if chunk.choices and chunk.choices[0].finish_reason:
            final = chunk
    assert final is not None and final.model_extra["edgeshard"]["failovers"], "the kill came too late"  # type: ignore[index]
    assert final.model_extra["edgeshard"]["token_ids"] == want  # type: ignore[index]
    assert text == undisturbed.choices[0].message.content
    jsonschema.validate(json.loads(text), SCHEMA)
    survivors = [p for p in peers if p is not last]
    wait_until(lambda: agreed(survivors), 240, "the survivors to agree on a new plan", survivors)


FORECAST = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
}
TOOLS: Any = [{"type": "function", "function": {"name": "forecast", "parameters": FORECAST}}]
WEATHER: Any = [{"role": "user", "content": "What will the weather be in Lisbon and in Porto this week?"}]


def test_a_forced_tool_call_survives_a_sigkill_of_its_last_stage(peers: list[Peer]) -> None:
    """The call's text is held until its block closes, so the kill is timed by the entry peer's
    token count (its /v1/status), not by what the stream has shown."""
    entry = stage_peer(peers, 0)
    api = client(entry, 600)
    asked: dict[str, Any] = {"model": MODEL, "messages": WEATHER, "tools": TOOLS, "tool_choice": "required"}
    undisturbed = api.chat.completions.create(**asked, temperature=0, max_tokens=300)
    want = undisturbed.model_extra["edgeshard"]["token_ids"]  # type: ignore[index]
    assert undisturbed.choices[0].finish_reason == "tool_calls" and len(want) > 16
    last = stage_peer(peers, -1)
    assert last is not entry, "the entry peer must survive the kill"
    before = (entry.status() or {})["api"]["tokens"]

    def kill_mid_call() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = entry.status()
            if status is not None and status["api"]["tokens"] >= before + 8:
                last.signal(signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_mid_call, daemon=True)
    killer.start()
    calls: dict[int, list[str]] = {}  # index: [name, arguments], as the deltas build them
    final = None
    for chunk in api.chat.completions.create(**asked, temperature=0, max_tokens=300, stream=True):
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, ["", ""])
            call[0] += (delta.function.name or "") if delta.function else ""
            call[1] += (delta.function.arguments or "") if delta.function else ""
        if chunk.choices and chunk.choices[0].finish_reason:
            final = chunk
    killer.join(timeout=5)
    assert final is not None and final.choices[0].finish_reason == "tool_calls"
    assert final.model_extra and final.model_extra["edgeshard"]["failovers"], "the kill came too late"
    assert final.model_extra["edgeshard"]["token_ids"] == want
    expected = undisturbed.choices[0].message.tool_calls
    assert expected and [(name, json.loads(arguments)) for name, arguments in calls.values()] == [
        (c.function.name, json.loads(c.function.arguments)) for c in expected
    ]
    for _name, arguments in calls.values():
        jsonschema.validate(json.loads(arguments), FORECAST)
