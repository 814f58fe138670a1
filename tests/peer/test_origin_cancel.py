"""A generation whose client goes away stops, even when its next token lands in the same tick.

Python 3.11's `asyncio.wait_for` returns the inner result instead of raising when the cancel
and the result arrive together; an origin waiting that way kept generating for a client that
had disconnected, holding its slot at every stage (seen in CI as sessions never freed).
"""

from __future__ import annotations

import asyncio

import pytest
from edgeshard.peer.pipeline.origin import Origin
from edgeshard.peer.wire import Close, Frame, InputIds, Open, Sampled, SamplingParams


@pytest.mark.asyncio
async def test_a_cancel_that_meets_a_token_in_the_same_tick_still_stops_the_generation() -> None:
    origin = Origin(url="http://origin")
    sent: list[Frame] = []

    async def send(_url: str, frame: Frame | bytes) -> None:
        assert not isinstance(frame, bytes)
        sent.append(frame)

    origin.links.send = send  # type: ignore[method-assign]
    produced: list[int] = []

    async def consume() -> None:
        async for token in origin.generate(["http://stage0"], [1, 2, 3], SamplingParams(), 50):
            produced.append(token)

    task = asyncio.get_running_loop().create_task(consume())
    for _ in range(20):
        await asyncio.sleep(0)
    steps = [f for f in sent if isinstance(f, InputIds)]
    assert isinstance(sent[0], Open) and len(steps) == 1
    session = steps[0].session
    # The token arrives, the waiting step wakes, and the client's cancel lands before the
    # generator runs again: both in one turn of the loop.
    await origin._receive(Sampled(session, 3, 42), origin_reply)
    await asyncio.sleep(0)  # (3.11's wait_for: its inner get completes here, the waiter not yet)
    steps_at_cancel = sum(isinstance(f, InputIds) for f in sent)
    task.cancel()
    done, _pending = await asyncio.wait([task], timeout=2.0)
    assert done, "the generation went on waiting for tokens after its cancel"
    with pytest.raises(asyncio.CancelledError):
        task.result()
    assert sum(isinstance(f, InputIds) for f in sent) == steps_at_cancel, "a step was sent after the cancel"
    assert isinstance(sent[-1], Close) and sent[-1].session == session


async def origin_reply(_frame: Frame) -> None:
    raise AssertionError("the origin does not reply")
