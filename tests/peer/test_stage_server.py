"""A stage answers bad frames with error frames and keeps serving (real sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator

import aiohttp
import msgpack
import pytest
import torch
from edgeshard.peer.errors import StageError
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.model.shard import even_split, unit_count
from edgeshard.peer.pipeline.hidden import hidden_frame
from edgeshard.peer.pipeline.links import Reply, frame_endpoint
from edgeshard.peer.pipeline.local import LocalCluster
from edgeshard.peer.pipeline.origin import TIMEOUT_TOKENS_PER_STEP, chunk_at, prefill_chunk, step_timeout
from edgeshard.peer.pipeline.servers import start_server
from edgeshard.peer.wire import Close, Error, Frame, InputIds, Open, Sampled, SamplingParams, decode, encode
from transformers import PreTrainedModel

from tests.engine_fixtures import reference_tokens

pytestmark = pytest.mark.slow


@pytest.fixture
async def cluster(default_source: GGUFModel) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(
        "default", even_split(unit_count(default_source.config), 2), source=default_source
    ) as running:
        yield running


async def _exchange(url: str, payloads: list[bytes]) -> list[Frame]:
    replies = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url + "/stage") as socket:
        for payload in payloads:
            await socket.send_bytes(payload)
            message = await socket.receive(timeout=30)
            replies.append(decode(message.data))
    return replies


async def test_bad_frames_get_error_frames_and_the_stage_lives(cluster: LocalCluster) -> None:
    stage0, stage1 = cluster.route
    bad = [
        b"\xc1garbage",  # not msgpack
        msgpack.packb([1, 2, 3]),  # not a map
        msgpack.packb({"t": "hidden", "s": "x", "pos": 0, "dtype": "int4", "shape": [1, 1], "data": b"\0"}),
        encode(InputIds("nobody", 0, (1, 2, 3))),  # unknown session
        encode(hidden_frame("x", 0, torch.zeros(1, 7), "float32")),  # wrong width
    ]
    replies = await _exchange(stage1, bad)
    assert all(isinstance(r, Error) for r in replies)
    codes = [r.code for r in replies if isinstance(r, Error)]
    assert codes[:3] == ["bad-msgpack", "bad-frame", "bad-dtype"]
    assert codes[3] == "wrong-stage"  # token ids sent to a stage without the embedding
    assert codes[4] == "bad-shape"
    # stage 0: unknown session, out-of-vocabulary token
    replies = await _exchange(stage0, [encode(InputIds("ghost", 0, (1,))), encode(InputIds("ghost", 0, (10**9,)))])
    assert [r.code for r in replies if isinstance(r, Error)] == ["SessionError", "bad-token"]
    # ... and generation still works on both stages.
    tokens = [t async for t in cluster.origin.generate(cluster.route, [1, 9690, 30], SamplingParams(), 5)]
    assert len(tokens) == 5


@contextlib.asynccontextmanager
async def _listening_origin() -> AsyncIterator[tuple[str, asyncio.Queue[Frame]]]:
    """A bare origin endpoint that keeps every frame it receives."""
    received: asyncio.Queue[Frame] = asyncio.Queue()

    async def keep(frame: Frame, _reply: Reply) -> None:
        received.put_nowait(frame)

    runner, url = await start_server(lambda app: app.router.add_get("/stage", frame_endpoint(keep)))
    try:
        yield url, received
    finally:
        await runner.cleanup()


async def test_position_out_of_order_is_an_error_not_a_crash(cluster: LocalCluster) -> None:
    stage0 = cluster.route[0]
    async with _listening_origin() as (origin, received):
        open_frame = Open("s1", tuple(cluster.route), 0, origin, "", SamplingParams())
        async with aiohttp.ClientSession() as session, session.ws_connect(stage0 + "/stage") as socket:
            await socket.send_bytes(encode(open_frame))
            await socket.send_bytes(encode(InputIds("s1", 5, (1, 2))))  # position 5 on an empty cache
            reply = await asyncio.wait_for(received.get(), 30)  # a step's fault goes to its origin
            assert isinstance(reply, Error) and reply.session == "s1" and reply.code == "SessionError"
            await socket.send_bytes(encode(Close("s1")))
    tokens = [t async for t in cluster.origin.generate(cluster.route, [1, 2, 3], SamplingParams(), 3)]
    assert len(tokens) == 3


async def test_a_closed_inbound_link_ends_its_sessions_down_the_route(cluster: LocalCluster) -> None:
    """An origin that vanishes without a Close: every stage forgets its sessions at once, not at
    the idle sweep ten minutes later."""
    async with _listening_origin() as (origin, received):
        async with aiohttp.ClientSession() as session, session.ws_connect(cluster.route[0] + "/stage") as socket:
            await socket.send_bytes(encode(Open("gone", tuple(cluster.route), 0, origin, "", SamplingParams())))
            await socket.send_bytes(encode(InputIds("gone", 0, (1, 2, 3))))
            token = await asyncio.wait_for(received.get(), 30)
            assert isinstance(token, Sampled) and token.position == 3
            assert all("gone" in stage.routes for stage in cluster._stages)
        for _ in range(100):
            if all("gone" not in s.routes and s.shard and "gone" not in s.shard.sessions for s in cluster._stages):
                break
            await asyncio.sleep(0.05)
        assert all("gone" not in s.routes for s in cluster._stages)
        assert all(s.shard is not None and "gone" not in s.shard.sessions for s in cluster._stages)


async def test_concurrent_sessions_share_passes_and_keep_their_tokens(cluster: LocalCluster) -> None:
    """Eight sessions at once: the stages batch them, and each gets the tokens it gets alone."""
    prompts = [[1, 9690, 30 + i] for i in range(8)]
    alone = [[t async for t in cluster.origin.generate(cluster.route, p, SamplingParams(), 12)] for p in prompts[:2]]
    passes_before = cluster._stages[1].batcher.passes

    async def run(prompt: list[int]) -> list[int]:
        return [t async for t in cluster.origin.generate(cluster.route, prompt, SamplingParams(), 12)]

    together = await asyncio.gather(*(run(p) for p in prompts))
    assert together[:2] == alone
    stage = cluster._stages[1]
    steps = 8 * 12
    assert stage.batcher.passes - passes_before < steps / 2  # most passes carried several sessions


async def test_the_entry_stage_cuts_micro_batches_and_every_session_keeps_its_tokens(cluster: LocalCluster) -> None:
    """A throughput plan's entry stage cuts the sessions in flight into one group per stage:
    its passes carry at most half of them here (2 stages), and no token changes."""
    prompts = [[1, 9690, 40 + i] for i in range(6)]
    alone = [t async for t in cluster.origin.generate(cluster.route, prompts[0], SamplingParams(), 10)]
    entry = cluster._stages[0].batcher
    entry.groups = 2
    passes, steps = entry.passes, entry.steps

    async def run(prompt: list[int]) -> list[int]:
        return [t async for t in cluster.origin.generate(cluster.route, prompt, SamplingParams(), 10)]

    together = await asyncio.gather(*(run(p) for p in prompts))
    assert together[0] == alone
    assert entry.steps - steps == 6 * 10
    assert entry.passes - passes >= 2 * 10  # at most 3 of the 6 in any pass: two groups a token
    assert cluster._stages[0].status()["groups"] == 2


async def test_unreachable_next_stage_reaches_the_origin_as_an_error(default_source: GGUFModel) -> None:
    async with LocalCluster("default", [(0, 32)], source=default_source) as running:
        route = [running.route[0], "http://127.0.0.1:9"]  # a second stage nobody serves
        with pytest.raises(StageError):
            _ = [t async for t in running.origin.generate(route, [1, 2, 3], SamplingParams(), 3, timeout_s=20)]


async def test_idle_sessions_are_swept(default_source: GGUFModel, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeshard.peer.pipeline import stage

    monkeypatch.setattr(stage, "SWEEP_INTERVAL_S", 0.2)
    async with LocalCluster("default", [(0, 32)], source=default_source) as running:
        server = running._stages[0]
        server.shard.idle_s = 0.5
        tokens = [t async for t in running.origin.generate(running.route, [1, 2, 3], SamplingParams(), 2)]
        assert len(tokens) == 2
        # The origin closed its session; open one by hand that nobody closes.
        await running.origin.links.send(
            running.route[0], Open("idle", tuple(running.route), 0, running.origin.url, "", SamplingParams())
        )
        await running.origin.links.send(running.route[0], InputIds("idle", 0, (1, 2)))
        for _ in range(50):
            await asyncio.sleep(0.1)
            if "idle" in server.shard.sessions:
                break
        assert "idle" in server.shard.sessions
        await asyncio.sleep(1.5)
        assert "idle" not in server.shard.sessions and "idle" not in server.routes


async def test_a_killed_next_stage_fails_its_sessions_at_once() -> None:
    """SIGKILL of a stage process closes its sockets; the stage before it tells the origin now,
    not after the step timeout."""
    async with LocalCluster("default", [(0, 10), (10, 20), (20, 32)], processes=True) as cluster:
        tokens = 0
        with pytest.raises(StageError) as failure:
            async for _token in cluster.origin.generate(cluster.route, [1, 2, 3, 4], SamplingParams(), 200):
                tokens += 1
                if tokens == 5:
                    cluster._children[1].send_signal(signal.SIGKILL)
                    killed = time.monotonic()
        assert failure.value.code == "link-broken"
        assert time.monotonic() - killed < 10  # the step timeout is 120 s


async def test_a_prefill_bigger_than_the_frame_limit_goes_in_chunks(
    default_source: GGUFModel, reference_model: PreTrainedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a 256 KiB frame limit, a 600-token prompt's hidden states (1.4 MB) cannot go as one
    frame; the origin sends it in chunks that fit, and the tokens are transformers' own."""
    from edgeshard.peer import wire

    monkeypatch.setattr(wire, "MAX_FRAME_BYTES", 256 * 1024)
    ids = default_source.tokenizer().encode("The history of the lighthouse, told slowly. " * 70)[:600]
    assert len(ids) == 600
    expected = reference_tokens(reference_model, ids, 6, None)
    async with LocalCluster("default", even_split(unit_count(default_source.config), 2), source=default_source) as run:
        assert prefill_chunk(run.origin.hidden_size, "float32") < 256
        tokens = [t async for t in run.origin.generate(run.route, ids, SamplingParams(), 6)]
        assert tokens == expected
        run.origin.hidden_size = None  # chunks sized for the default limit no longer fit
        with pytest.raises(StageError) as refused:
            # Not from the prefix cache (the first run left the prompt there): the whole prompt again.
            _ = [t async for t in run.origin.generate(run.route, ids, SamplingParams(), 2, reuse=False)]
        assert refused.value.code == "too-large"


def test_a_fault_after_the_pass_fails_only_its_own_session() -> None:
    """A step whose sampling fails (NaN logits) becomes that session's error; the others in the
    pass get their tokens."""
    from edgeshard.peer.model.shard import Step
    from edgeshard.peer.pipeline.passes import SessionRoute, run_pass

    class Logits:
        def run_batch(self, steps: list[Step]) -> list[torch.Tensor]:
            good = torch.zeros(8)
            good[3] = 5.0
            return [torch.full((8,), float("nan")), good]

    steps = [Step("bad", 0, torch.tensor([1])), Step("good", 0, torch.tensor([1]))]
    route = SessionRoute(None, "http://origin", SamplingParams(temperature=1.0, seed=1), "float32", "")
    outputs = run_pass(Logits(), steps, [route, route], [None, None])  # type: ignore[arg-type]
    bad, good = (decode(o.data) for o in outputs if o is not None)
    assert isinstance(bad, Error) and bad.session == "bad" and bad.code == "stage-fault"
    assert isinstance(good, Sampled) and good.session == "good" and good.token_id == 3


def test_a_prompt_chunk_waits_longer_than_a_decode_step() -> None:
    assert step_timeout(120.0, 1) == 120.0
    assert step_timeout(120.0, TIMEOUT_TOKENS_PER_STEP) == 120.0
    assert step_timeout(120.0, TIMEOUT_TOKENS_PER_STEP + 1) == 240.0
    assert step_timeout(120.0, 256) == 120.0 * 256 / TIMEOUT_TOKENS_PER_STEP


def test_prompt_chunks_shrink_as_the_positions_they_attend_to_grow() -> None:
    """A chunk's pass holds every session decoding beside it; its attention grows with the
    positions before it, so chunks deep into a long prompt are smaller (never under 16)."""
    sizes = [chunk_at(256, position) for position in (0, 512, 1024, 4096, 8192, 60000)]
    assert sizes[0] == 256 and sizes == sorted(sizes, reverse=True) and sizes[-1] == 16
    assert chunk_at(100, 0) == 100 and chunk_at(8, 9000) == 8  # the frame limit's bound still rules
    for position in (0, 1000, 3000, 8000):  # tokens x (positions + 1024): about one start chunk's
        assert chunk_at(256, position) * (position + 1024) <= 256 * 1024 * 1.05


async def test_a_slow_prompt_chunk_is_not_taken_for_a_dead_stage(default_source: GGUFModel) -> None:
    """A timeout shorter than a 256-token chunk's compute (but longer than a decode step's)
    still lets the prompt through: its bound grows with the chunk (a slow device's int8 chunk
    outlasted the decode bound)."""
    ids = default_source.tokenizer().encode("A long and slow afternoon by the sea. " * 40)[:256]
    async with LocalCluster("default", [(0, 32)], source=default_source) as run:
        started = time.perf_counter()
        _ = [t async for t in run.origin.generate(run.route, ids, SamplingParams(), 1)]
        chunk_s = time.perf_counter() - started
        timeout_s = chunk_s / 3  # under the chunk's time, far over a decode step's
        again = run.origin.generate(run.route, ids, SamplingParams(), 3, timeout_s=timeout_s, reuse=False)
        tokens = [t async for t in again]  # the whole chunk again, not the first run's cached blocks
        assert len(tokens) == 3
