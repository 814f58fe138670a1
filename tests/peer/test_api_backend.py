"""The API's handlers serve any `Backend`, not just the daemon's node: here a backend over a local
cluster of stage servers (real sockets, the real model), and one that is never ready."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from edgeshard.peer.api.handlers import Api, Backend
from edgeshard.peer.model.files import GGUFModel
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
