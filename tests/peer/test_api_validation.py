"""The user API refuses every malformed request with a 4xx in OpenAI's error shape (never a 500),
and wants the API key when it has one. A fake backend (a character tokenizer, an origin that
answers "Hello!") keeps these tests free of the model."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import openai
import pytest
from edgeshard.peer.api.client import ApiError, get_status
from edgeshard.peer.api.errors import RequestError
from edgeshard.peer.api.handlers import Api
from edgeshard.peer.api.schemas import ChatRequest, parse_chat_request
from edgeshard.peer.pipeline.layouts import ReadyLayout
from edgeshard.peer.pipeline.origin import Origin
from edgeshard.peer.pipeline.servers import start_server
from edgeshard.peer.wire import SamplingParams
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

CONTEXT = 64
MODEL = "test-model"
KEY = "s3cret-key"
ANSWER = "Hello!"
T = TypeVar("T")


class CharTokenizer:
    """One token per character; like some real chat templates, it wants roles to alternate."""

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        roles = [m["role"] for m in messages if m["role"] != "system"]
        if any(a == b for a, b in itertools.pairwise(roles)):
            raise TemplateError("Conversation roles must alternate user/assistant/user/assistant/...")
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + (
            "<assistant>" if add_generation_prompt else ""
        )
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


class FakeOrigin:
    """Answers ANSWER, one character a token, up to max_tokens."""

    async def generate(
        self, urls: Sequence[str], ids: Sequence[int], sampling: SamplingParams, max_tokens: int, *_: Any, **__: Any
    ) -> AsyncIterator[int]:
        for char in ANSWER[:max_tokens]:
            yield ord(char)


@dataclass
class FakeBackend:
    model_name: str = MODEL
    context: int = CONTEXT
    fake_origin: FakeOrigin = field(default_factory=FakeOrigin)

    @property
    def origin(self) -> Origin:
        return cast(Origin, self.fake_origin)

    def tokenizer(self) -> PreTrainedTokenizerBase:
        return cast(PreTrainedTokenizerBase, CharTokenizer())

    def stop_ids(self) -> Sequence[int]:
        return []

    async def wait_ready_layout(self, timeout_s: float) -> ReadyLayout:
        return ReadyLayout("fixed", ("http://stage",))

    def status(self) -> dict[str, Any]:
        return {"ready": True}


class ThreadedServer:
    """The API on its own event loop in a thread, so that plain (and hypothesis) tests can call it."""

    def __init__(self, api: Api) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner, self.url = self.call(start_server(api.add_routes))

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def close(self) -> None:
        self.call(self.runner.cleanup())
        self.call(self.loop.shutdown_default_executor())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def send(
        self, method: str, path: str, body: bytes | Iterator[bytes] = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        address = urlsplit(self.url)
        connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
        try:
            chunked = not isinstance(body, bytes)
            heads = {"Content-Type": "application/json", **(headers or {})}
            connection.request(method, path, body=body, headers=heads, encode_chunked=chunked)
            response = connection.getresponse()
            return response.status, dict(response.headers), response.read()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def api() -> Iterator[ThreadedServer]:
    server = ThreadedServer(Api(FakeBackend()))
    yield server
    server.close()


@pytest.fixture(scope="module")
def keyed() -> Iterator[ThreadedServer]:
    server = ThreadedServer(Api(FakeBackend(), api_key=KEY))
    yield server
    server.close()


def _error(status: int, raw: bytes) -> dict[str, Any]:
    """The OpenAI error object of a 4xx response (asserting its shape)."""
    assert 400 <= status < 500, (status, raw[:300])
    body = json.loads(raw)
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] is None or isinstance(error["param"], str)
    return cast(dict[str, Any], error)


HI = [{"role": "user", "content": "hi"}]


def _chat(**fields: Any) -> bytes:
    return json.dumps({"model": MODEL, "messages": HI, **fields}).encode()


def _raw_chat(tail: str) -> bytes:
    """A chat body with a field written as raw JSON text (json.dumps cannot write NaN's refusal cases)."""
    return b'{"messages": [{"role": "user", "content": "hi"}], ' + tail.encode() + b"}"


# (id, body, status, param, code): param and code None mean "must be null".
BAD: list[tuple[str, bytes, int, str | None, str | None]] = [
    ("not json", b"hello", 400, None, "invalid_json"),
    ("empty body", b"", 400, None, "invalid_json"),
    ("bad utf-8", b'{"messages": "\xff\xfe"}', 400, None, "invalid_json"),
    ("deep nesting", b"[" * 200_000, 400, None, "invalid_json"),
    ("giant integer", _raw_chat('"seed": ' + "9" * 5000), 400, None, "invalid_json"),
    ("NaN", _raw_chat('"temperature": NaN'), 400, None, "invalid_json"),
    ("Infinity", _raw_chat('"top_p": Infinity'), 400, None, "invalid_json"),
    ("-Infinity", _raw_chat('"temperature": -Infinity'), 400, None, "invalid_json"),
    ("overflowing float", _raw_chat('"temperature": 1e999'), 400, None, "invalid_json"),
    ("a list", b"[]", 400, None, None),
    ("a string", b'"hi"', 400, None, None),
    ("null", b"null", 400, None, None),
    ("no messages", b"{}", 400, "messages", None),
    ("empty messages", _chat(messages=[]), 400, "messages", None),
    ("messages a string", _chat(messages="hi"), 400, "messages", None),
    ("message a string", _chat(messages=["hi"]), 400, "messages[0]", None),
    ("unknown role", _chat(messages=[{"role": "robot", "content": "x"}]), 400, "messages[0].role", None),
    ("function role", _chat(messages=[*HI, {"role": "function", "content": "x"}]), 400, "messages[1].role", None),
    ("tool without content", _chat(messages=[*HI, {"role": "tool"}]), 400, "messages[1].content", None),
    ("no role", _chat(messages=[{"content": "x"}]), 400, "messages[0].role", None),
    ("role a list", _chat(messages=[{"role": ["user"], "content": "x"}]), 400, "messages[0].role", None),
    ("no content", _chat(messages=[{"role": "user"}]), 400, "messages[0].content", None),
    ("content a number", _chat(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content", None),
    ("content an object", _chat(messages=[{"role": "user", "content": {}}]), 400, "messages[0].content", None),
    ("content empty list", _chat(messages=[{"role": "user", "content": []}]), 400, "messages[0].content", None),
    (
        "image part",
        _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        400,
        "messages[0].content[0]",
        None,
    ),
    (
        "text part without text",
        _chat(messages=[{"role": "user", "content": [{"type": "text", "text": 3}]}]),
        400,
        "messages[0].content[0].text",
        None,
    ),
    (
        "lone surrogate",
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
        400,
        "messages[0].content",
        None,
    ),
    ("model a number", _chat(model=5), 400, "model", None),
    ("unknown model", _chat(model="gpt-4o"), 404, "model", "model_not_found"),
    ("max_tokens a string", _chat(max_tokens="10"), 400, "max_tokens", None),
    ("max_tokens zero", _chat(max_tokens=0), 400, "max_tokens", None),
    ("max_tokens negative", _chat(max_tokens=-1), 400, "max_tokens", None),
    ("max_tokens a fraction", _chat(max_tokens=1.5), 400, "max_tokens", None),
    ("max_tokens a bool", _chat(max_tokens=True), 400, "max_tokens", None),
    ("max_tokens past the context", _chat(max_tokens=CONTEXT + 1), 400, "max_tokens", None),
    ("max_completion_tokens zero", _chat(max_completion_tokens=0), 400, "max_completion_tokens", None),
    ("temperature a string", _chat(temperature="hot"), 400, "temperature", None),
    ("temperature negative", _chat(temperature=-0.1), 400, "temperature", None),
    ("temperature above 2", _chat(temperature=2.5), 400, "temperature", None),
    ("temperature a bool", _chat(temperature=True), 400, "temperature", None),
    ("temperature a giant integer", _chat(temperature=10**400), 400, "temperature", None),
    ("top_p a giant negative integer", _chat(top_p=-(10**400)), 400, "top_p", None),
    ("max_tokens a giant integer", _chat(max_tokens=10**400), 400, "max_tokens", None),
    ("top_p zero", _chat(top_p=0), 400, "top_p", None),
    ("top_p above 1", _chat(top_p=1.5), 400, "top_p", None),
    ("top_p a list", _chat(top_p=[1]), 400, "top_p", None),
    ("seed a string", _chat(seed="1"), 400, "seed", None),
    ("seed a fraction", _chat(seed=1.5), 400, "seed", None),
    ("seed past 64 bits", _chat(seed=2**63), 400, "seed", None),
    ("seed a bool", _chat(seed=False), 400, "seed", None),
    ("stop a number", _chat(stop=5), 400, "stop", None),
    ("five stops", _chat(stop=["a"] * 5), 400, "stop", None),
    ("stop not strings", _chat(stop=[1]), 400, "stop", None),
    ("stream a string", _chat(stream="yes"), 400, "stream", None),
    ("stream a number", _chat(stream=1), 400, "stream", None),
    ("n two", _chat(n=2), 400, "n", None),
    ("n zero", _chat(n=0), 400, "n", None),
    ("n a string", _chat(n="1"), 400, "n", None),
    (
        "prompt and max_tokens past the context",
        _chat(messages=[{"role": "user", "content": "x" * 40}], max_tokens=30),
        400,
        "messages",
        "context_length_exceeded",
    ),
    (
        "prompt alone past the context",
        _chat(messages=[{"role": "user", "content": "x" * CONTEXT}]),
        400,
        "messages",
        "context_length_exceeded",
    ),
    ("refused by the chat template", _chat(messages=[*HI, *HI]), 400, "messages", None),
    ("over 1 MiB", _chat(messages=[{"role": "user", "content": "x" * 2**20}]), 413, None, "request_too_large"),
]


@pytest.mark.parametrize(("body", "status", "param", "code"), [case[1:] for case in BAD], ids=[c[0] for c in BAD])
def test_malformed_chat_requests_get_openai_errors(
    api: ThreadedServer, body: bytes, status: int, param: str | None, code: str | None
) -> None:
    got, _, raw = api.send("POST", "/v1/chat/completions", body)
    assert got == status, raw[:300]
    error = _error(got, raw)
    assert (error["param"], error["code"]) == (param, code)


def test_context_refusals_give_the_numbers(api: ThreadedServer) -> None:
    body = _chat(messages=[{"role": "user", "content": "x" * 40}], max_tokens=30)
    _, _, raw = api.send("POST", "/v1/chat/completions", body)
    message = _error(400, raw)["message"]
    prompt = len("<user>" + "x" * 40 + "<assistant>")
    assert str(CONTEXT) in message and str(prompt) in message and "30" in message and str(prompt + 30) in message


def test_a_chunked_body_past_the_bound_gets_413(api: ThreadedServer) -> None:
    chunks = iter([b'{"messages": "', *([b"x" * 65536] * 20), b'"}'])
    status, _, raw = api.send("POST", "/v1/chat/completions", chunks)
    assert status == 413 and _error(status, raw)["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
        ("PUT", "/v1/chat/completions", 405, "method_not_allowed"),
        ("POST", "/v1/models", 405, "method_not_allowed"),
        ("DELETE", "/v1/status", 405, "method_not_allowed"),
        ("GET", "/v1/nothing", 404, "unknown_url"),
        ("POST", "/", 405, "method_not_allowed"),  # GET / is the dashboard
        ("POST", "/v2/nothing", 404, "unknown_url"),
    ],
)
def test_wrong_methods_and_paths_get_openai_errors(
    api: ThreadedServer, method: str, path: str, status: int, code: str
) -> None:
    got, headers, raw = api.send(method, path, _chat())
    assert got == status and _error(got, raw)["code"] == code
    if status == 405:
        assert headers.get("Allow")


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"model": None, "max_tokens": None, "temperature": None, "stop": None, "stream": None, "n": None},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}]},
        {"messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi", "name": "x"}]},
        {"max_completion_tokens": 10, "max_tokens": 0, "temperature": 2, "top_p": 1, "seed": -(2**63)},
        {"n": 1, "stop": ["\n", "a", "b", "c"], "seed": 2**63 - 1, "temperature": 0.0, "top_p": 1e-6},
        {"logit_bias": {}, "user": "someone", "response_format": {"type": "text"}, "unknown": [1, 2]},
    ],
)
def test_well_formed_requests_are_answered(api: ThreadedServer, fields: dict[str, Any]) -> None:
    status, _, raw = api.send("POST", "/v1/chat/completions", _chat(**fields))
    assert status == 200, raw[:300]
    answer = json.loads(raw)
    assert answer["choices"][0]["message"]["content"] == ANSWER and answer["model"] == MODEL


def test_a_stream_is_answered_in_server_sent_events(api: ThreadedServer) -> None:
    status, headers, raw = api.send("POST", "/v1/chat/completions", _chat(stream=True, max_tokens=3))
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = [line.removeprefix("data: ") for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == ANSWER[:3]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


# --- the API key ---

ROUTES = [("GET", "/v1/models", b""), ("GET", "/v1/status", b""), ("POST", "/v1/chat/completions", _chat())]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", f"Bearer {KEY}x", f"Basic {KEY}", KEY, "Bearer s3cret-kéy"],
)
def test_every_route_wants_the_api_key(
    keyed: ThreadedServer, method: str, path: str, body: bytes, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    status, response_headers, raw = keyed.send(method, path, body, headers)
    assert status == 401 and _error(status, raw)["code"] == "invalid_api_key"
    assert response_headers.get("WWW-Authenticate") == "Bearer"
    assert KEY not in raw.decode()


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize("authorization", [f"Bearer {KEY}", f"bearer {KEY}", f"Bearer  {KEY} "])
def test_the_right_api_key_opens_every_route(
    keyed: ThreadedServer, method: str, path: str, body: bytes, authorization: str
) -> None:
    status, _, raw = keyed.send(method, path, body, {"Authorization": authorization})
    assert status == 200, raw[:300]


def test_unknown_paths_want_the_api_key_too(keyed: ThreadedServer) -> None:
    status, _, raw = keyed.send("GET", "/v1/secret-things")
    assert status == 401 and _error(status, raw)["code"] == "invalid_api_key"
    status, _, raw = keyed.send("GET", "/v1/secret-things", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 404 and _error(status, raw)["code"] == "unknown_url"


def test_openais_client_sends_the_key(keyed: ThreadedServer) -> None:
    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=keyed.url + "/v1", api_key=key, max_retries=0, timeout=30)

    with client(KEY) as good:
        assert [m.id for m in good.models.list()] == [MODEL]
        answer = good.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert answer.choices[0].message.content == ANSWER[:4]
        with pytest.raises(openai.NotFoundError) as missing:
            good.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as bad:
            good.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=3)
        assert bad.value.param == "temperature"
    with client("wrong") as wrong, pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.code == "invalid_api_key"


def test_the_commands_client_sends_the_key(keyed: ThreadedServer) -> None:
    assert get_status(keyed.url, api_key=KEY) == {"ready": True}
    with pytest.raises(ApiError, match="HTTP 401"):
        get_status(keyed.url)


# --- property: nothing a client sends gives a 5xx ---

EDGES = st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, 2**64, -(2**63) - 1, 10**400, -(10**400), 1e308, 5e-324])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | EDGES | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "stream", "n"]
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "robot"]) | JSON,
        "content": st.text(max_size=30)
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": JSON}))
        | JSON,
    },
)
# Bodies shaped like chat requests, with every field drawn from anything JSON holds.
CHAT_BODY = st.fixed_dictionaries(
    {"messages": st.lists(MESSAGE, max_size=3) | JSON},
    optional={key: JSON | st.integers(-3, 80) | st.floats(-1, 3) for key in FIELDS},
)
BODIES = (
    CHAT_BODY.map(lambda body: json.dumps(body).encode())
    | JSON.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=64)
)


@settings(max_examples=300)
@given(body=BODIES)
def test_no_body_gives_a_server_error(api: ThreadedServer, body: bytes) -> None:
    status, _, raw = api.send("POST", "/v1/chat/completions", body)
    assert status < 500, raw[:300]
    if status != 200:
        _error(status, raw)


@settings(max_examples=500)
@given(body=JSON | CHAT_BODY)
def test_parsing_returns_a_request_or_a_request_error(body: Any) -> None:
    try:
        chat = parse_chat_request(body, MODEL, CONTEXT)
    except RequestError as error:
        assert 400 <= error.status < 500 and str(error)
    else:
        assert isinstance(chat, ChatRequest) and chat.messages


def test_parsing_refuses_values_json_cannot_carry() -> None:
    for key, value in [("temperature", float("nan")), ("top_p", float("nan")), ("temperature", float("inf"))]:
        with pytest.raises(RequestError) as refused:
            parse_chat_request({"messages": HI, key: value}, MODEL)
        assert refused.value.param == key
