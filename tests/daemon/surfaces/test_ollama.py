"""Ollama's API, through the official `ollama` Python client against real peers: chat and
generate, whole and streamed, with the same tokens as OpenAI's route; tags, show, version;
`format` as a JSON schema; Ollama's error shape for what is refused (never a 5xx)."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import jsonschema
import ollama
import pytest

from ..peers import Peer, client

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "Name three colours."}]


@contextlib.contextmanager
def ollama_client(peer: Peer) -> Iterator[ollama.Client]:
    api = ollama.Client(host=peer.api, timeout=300)
    try:
        yield api
    finally:
        api.close()


def test_chat_and_generate_answer_as_openais_route_does(surface_cluster: list[Peer]) -> None:
    with ollama_client(surface_cluster[0]) as api:
        chat_and_generate(api, surface_cluster[0])


def chat_and_generate(api: ollama.Client, peer: Peer) -> None:
    options = {"temperature": 0, "num_predict": 12}
    whole = api.chat(model=MODEL, messages=ASK, options=options, stream=False)
    assert whole.done and whole.done_reason in ("stop", "length") and whole.message.role == "assistant"
    assert whole.eval_count and whole.prompt_eval_count and whole.total_duration
    openai_answer = client(peer).chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=12)  # type: ignore[arg-type]
    assert whole.message.content == openai_answer.choices[0].message.content
    pieces = list(api.chat(model=MODEL + ":latest", messages=ASK, options=options, stream=True))
    assert pieces[-1].done and not any(p.done for p in pieces[:-1])
    assert "".join(p.message.content or "" for p in pieces) == whole.message.content

    generated = api.generate(model=MODEL, prompt=ASK[0]["content"], options=options, stream=False)
    assert generated.response == whole.message.content  # the chat template, as Ollama applies it
    streamed = list(api.generate(model=MODEL, prompt=ASK[0]["content"], options=options, stream=True))
    assert "".join(p.response or "" for p in streamed) == generated.response
    raw = api.generate(model=MODEL, prompt="The capital of France is", raw=True, options=options, stream=False)
    assert raw.done and raw.response


def test_format_as_a_schema_validates(surface_cluster: list[Peer]) -> None:
    schema = {
        "type": "object",
        "properties": {"colours": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
        "required": ["colours"],
        "additionalProperties": False,
    }
    with ollama_client(surface_cluster[1]) as api:
        options = {"temperature": 0, "num_predict": 60}
        answer = api.chat(model=MODEL, messages=ASK, format=schema, options=options, stream=False)
    jsonschema.validate(json.loads(answer.message.content or ""), schema)


def test_tags_show_and_version(surface_cluster: list[Peer]) -> None:
    with ollama_client(surface_cluster[2]) as api:
        assert [m.model for m in api.list().models] == [MODEL]
        shown = api.show(MODEL)
    assert shown.modelinfo and shown.modelinfo["llama.context_length"] > 0
    assert shown.capabilities and "tools" in shown.capabilities and shown.template
    with urllib.request.urlopen(f"{surface_cluster[2].api}/api/version", timeout=30) as response:
        assert json.load(response)["version"]


def _post(peer: Peer, path: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{peer.api}{path}", data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read().splitlines()[-1])
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/chat", {"model": "llama3", "messages": ASK}, 404),
        ("/api/chat", {"model": MODEL, "messages": "hi"}, 400),
        ("/api/chat", {"model": MODEL, "messages": ASK, "options": {"temperature": "hot"}}, 400),
        ("/api/chat", {"model": MODEL, "messages": ASK, "options": {"flash": 1}}, 400),
        ("/api/chat", {"model": MODEL, "messages": ASK, "options": {"top_k": -1}}, 400),
        ("/api/chat", {"model": MODEL, "messages": ASK, "format": "yaml"}, 400),
        ("/api/chat", {"model": MODEL, "messages": ASK, "format": {"$ref": "#/nowhere"}}, 400),
        ("/api/chat", {"messages": ASK}, 400),
        ("/api/chat", [1, 2], 400),
        ("/api/chat", b"{not json", 400),
        ("/api/generate", {"model": MODEL, "prompt": 7}, 400),
        ("/api/generate", {"model": MODEL, "prompt": "hi", "options": {"num_predict": 0}}, 400),
        ("/api/show", {"model": "other"}, 404),
        ("/api/chat", {"model": MODEL, "messages": ASK, "options": {"top_k": 2**64}}, 400),
        ("/api/chat", {"model": MODEL, "messages": ASK, "tools": [{"type": "function"}]}, 400),
        ("/api/generate", {"model": MODEL, "prompt": "hi", "raw": "yes"}, 400),
    ],
)
def test_refusals_come_in_ollamas_shape(surface_cluster: list[Peer], path: str, body: Any, status: int) -> None:
    got, answer = _post(surface_cluster[0], path, body)
    assert got == status, answer
    assert isinstance(answer.get("error"), str) and answer["error"]


def test_stream_null_streams_as_ollama_does(surface_cluster: list[Peer]) -> None:
    body = {"model": MODEL, "messages": ASK, "stream": None, "options": {"temperature": 0, "num_predict": 4}}
    request = urllib.request.Request(
        f"{surface_cluster[0].api}/api/chat", json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    assert lines[-1]["done"] and not any(line["done"] for line in lines[:-1])


def test_an_empty_prompt_only_says_the_model_is_loaded(surface_cluster: list[Peer]) -> None:
    status, answer = _post(surface_cluster[0], "/api/generate", {"model": MODEL, "prompt": "", "stream": False})
    assert status == 200 and answer["done"] and answer["done_reason"] == "load"
