"""The API's handlers serve any `Backend`, not just the daemon's node: here a backend over a local
cluster of stage servers (real sockets, the real model), and one that is never ready."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from edgeshard.peer.api.handlers import Api, Backend
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.model.grammar import source_grammars
from edgeshard.peer.model.shard import even_split, unit_count
from edgeshard.peer.model.text import stop_token_ids
from edgeshard.peer.pipeline.failover import NoRouteError
from edgeshard.peer.pipeline.layouts import ReadyLayout
from edgeshard.peer.pipeline.local import LocalCluster
from edgeshard.peer.pipeline.origin import Origin
from edgeshard.peer.pipeline.servers import start_server
from edgeshard.peer.wire import SamplingParams
from transformers import PreTrainedTokenizerBase

from tests.engine_fixtures import chat_ids


@dataclass
class ClusterBackend:
    """A backend over fixed stage servers; `ready` False makes every request wait in vain."""

    source: GGUFModel
    cluster: LocalCluster | None
    ready: bool = True
    context: int = 256
    model_name: str = "test-model"

    @property
    def origin(self) -> Origin:
        assert self.cluster is not None
        return self.cluster.origin

    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.source.tokenizer()

    def stop_ids(self) -> Sequence[int]:
        return stop_token_ids(self.source.config)

    async def wait_ready_layout(self, timeout_s: float) -> ReadyLayout:
        if not self.ready or self.cluster is None:
            raise NoRouteError("the test says no")
        return ReadyLayout("fixed", tuple(self.cluster.route))

    def status(self) -> dict[str, Any]:
        return {"ready": self.ready}


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@asynccontextmanager
async def served_two_stages(source: GGUFModel, context: int) -> AsyncIterator[str]:
    """The API, with grammars, over two in-process stages of `source`; yields its base URL."""
    ranges = even_split(unit_count(source.config), 2)
    async with LocalCluster("default", ranges, source=source) as cluster:
        backend = ClusterBackend(source, cluster, context=context)
        runner, url = await start_server(Api(backend, grammars=source_grammars(source)).add_routes)
        try:
            yield url
        finally:
            await runner.cleanup()


@pytest.fixture
async def not_ready(default_source: GGUFModel) -> AsyncIterator[str]:
    backend: Backend = ClusterBackend(default_source, None, ready=False)
    runner, url = await start_server(Api(backend).add_routes)
    yield url
    await runner.cleanup()


async def test_a_backend_that_is_never_ready_gets_503_and_bad_requests_400(not_ready: str) -> None:
    chat = f"{not_ready}/v1/chat/completions"
    status, body = await asyncio.to_thread(_post, chat, {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 503 and "the test says no" in body["error"]["message"]
    status, body = await asyncio.to_thread(_post, chat, {"messages": []})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    long = [{"role": "user", "content": "word " * 400}]
    status, body = await asyncio.to_thread(_post, chat, {"messages": long})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"


@pytest.mark.slow
async def test_the_handlers_generate_through_any_backend(default_source: GGUFModel) -> None:
    ranges = even_split(unit_count(default_source.config), 2)
    async with LocalCluster("default", ranges, source=default_source) as cluster:
        backend = ClusterBackend(default_source, cluster)
        runner, url = await start_server(Api(backend).add_routes)
        try:
            body = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0}
            status, answer = await asyncio.to_thread(_post, f"{url}/v1/chat/completions", {**body, "max_tokens": 12})
            assert status == 200, answer
            ids = chat_ids(default_source, "What is the capital of France?")
            stream = cluster.origin.generate(cluster.route, ids, SamplingParams(), 12, backend.stop_ids())
            direct = [t async for t in stream]
            assert answer["edgeshard"]["token_ids"] == direct
            assert "Paris" in answer["choices"][0]["message"]["content"]
            assert answer["model"] == "test-model" and answer["edgeshard"]["layout_id"] == "fixed"
        finally:
            await runner.cleanup()


def _stream(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every server-sent event's JSON, up to [DONE]."""
    request = urllib.request.Request(url, json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    events = []
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                return events
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    raise AssertionError("the stream ended without [DONE]")


@dataclass
class PlannedBackend(ClusterBackend):
    """A backend whose status names the stages and the planner's figures for the fixed layout."""

    def status(self) -> dict[str, Any]:
        assert self.cluster is not None
        stages = [
            {"device": f"dev{i}", "address": url.removeprefix("http://"), "predicted_compute_ms": 1.5 * (i + 1)}
            | {"predicted_transfer_ms": 0.25}
            for i, url in enumerate(self.cluster.route)
        ]
        return {"ready": True, "plan": {"layout_id": "fixed", "stages": stages}}


@pytest.mark.slow
async def test_text_completions_and_where_each_tokens_time_went(default_source: GGUFModel) -> None:
    ranges = even_split(unit_count(default_source.config), 3)
    async with LocalCluster("default", ranges, source=default_source) as cluster:
        backend = PlannedBackend(default_source, cluster)
        api = Api(backend)
        runner, url = await start_server(api.add_routes)
        try:
            prompt = "The capital of France is"
            ids = list(default_source.tokenizer().encode(prompt))
            stream = cluster.origin.generate(cluster.route, ids, SamplingParams(), 8, backend.stop_ids())
            direct = [t async for t in stream]
            body = {"prompt": prompt, "max_tokens": 8, "temperature": 0}
            status, whole = await asyncio.to_thread(_post, f"{url}/v1/completions", body)
            assert status == 200, whole
            assert whole["object"] == "text_completion" and whole["id"].startswith("cmpl-")
            assert whole["edgeshard"]["token_ids"] == direct
            text = whole["choices"][0]["text"]
            assert text == default_source.tokenizer().decode(direct, skip_special_tokens=True)
            status, echoed = await asyncio.to_thread(
                _post, f"{url}/v1/completions", {**body, "prompt": [ids], "echo": True}
            )
            assert status == 200 and echoed["choices"][0]["text"] == prompt + text

            events = await asyncio.to_thread(
                _stream, f"{url}/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}
            )
            assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == text
            assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == len(direct)
            assert all(e["usage"] is None for e in events[:-1])

            # Where the time went: one entry per stage, per link (origin → 3 stages → origin).
            timing = whole["edgeshard"]["timing"]
            assert timing["steps"] == len(direct) - 1  # the first token comes from the prompt's pass
            assert [s["device"] for s in timing["stages"]] == ["dev0", "dev1", "dev2"]
            assert [s["predicted_compute_ms"] for s in timing["stages"]] == [1.5, 3.0, 4.5]
            assert [(link["from"], link["to"]) for link in timing["links"]] == [
                ("origin", "dev0"),
                ("dev0", "dev1"),
                ("dev1", "dev2"),
                ("dev2", "origin"),
            ]
            assert timing["links"][0]["predicted_ms"] is None and timing["links"][1]["predicted_ms"] == 0.25
            assert timing["predicted_ms_per_token"] == pytest.approx(1.5 + 3.0 + 4.5 + 3 * 0.25)
            assert all(s["compute_ms"] > 0 and s["queue_ms"] >= 0 for s in timing["stages"])
            assert timing["ttft_ms"] > 0
            # Each token's wall time is its stages' hold plus its transfers: nothing unaccounted.
            held = sum(s["queue_ms"] + s["compute_ms"] + s["other_ms"] for s in timing["stages"])
            assert held + timing["transfer_ms"] == pytest.approx(timing["ms_per_token"], rel=0.02, abs=0.05)

            # The telemetry kept each reply and how it ended; a malformed request is counted too.
            status, refused = await asyncio.to_thread(_post, f"{url}/v1/completions", {**body, "n": 2})
            assert status == 400 and refused["error"]["param"] == "n"
            outcomes = api.telemetry.outcomes
            assert outcomes["completed"] == 3 and outcomes["invalid"] == 1
            last = api.telemetry.last()
            assert last is not None and last.kind == "text" and last.timing is not None
        finally:
            await runner.cleanup()


def _get_as(url: str, host: str) -> int:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


async def test_an_api_without_a_key_answers_only_requests_to_a_loopback_name(not_ready: str) -> None:
    """DNS rebinding: a page on evil.example that resolves its name to 127.0.0.1 reaches the
    API's socket, but its requests name evil.example as Host."""
    port = not_ready.rsplit(":", 1)[1]
    models = f"{not_ready}/v1/models"
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.2"):
        assert await asyncio.to_thread(_get_as, models, host) == 200, host
    for host in (f"evil.example:{port}", "127.0.0.1.evil.example", "198.18.0.1"):
        assert await asyncio.to_thread(_get_as, models, host) == 403, host
