"""Admission at the origin: slots in arrival order, a bounded queue, places given back."""

from __future__ import annotations

import asyncio

import pytest
from edgeshard.peer.api.admission import Admission, QueueFull, ShuttingDown, TokenMeter


async def test_requests_beyond_the_slots_wait_in_order_and_beyond_the_queue_are_refused() -> None:
    admission = Admission(capacity=2, queue_bound=2)
    order: list[int] = []
    release = asyncio.Event()

    async def request(index: int) -> None:
        async with admission.slot():
            order.append(index)
            await release.wait()

    tasks = [asyncio.create_task(request(i)) for i in range(4)]
    await asyncio.sleep(0.01)
    assert order == [0, 1] and admission.active == 2 and admission.queued == 2
    with pytest.raises(QueueFull) as refused:
        async with admission.slot():
            pass
    assert refused.value.retry_after_s >= 1 and admission.refused == 1
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]  # the queue is served first come, first served
    assert admission.active == 0 and admission.queued == 0


async def test_a_request_that_goes_away_gives_its_place_back() -> None:
    admission = Admission(capacity=1, queue_bound=4)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with admission.slot():
            holding.set()
            await release.wait()

    first = asyncio.create_task(hold())
    await holding.wait()

    async def wait_in_line() -> float:
        async with admission.slot() as queued_s:
            return queued_s

    leaving = asyncio.create_task(wait_in_line())
    staying = asyncio.create_task(wait_in_line())
    await asyncio.sleep(0.01)
    assert admission.queued == 2
    leaving.cancel()  # a client that disconnects while queued
    await asyncio.sleep(0.01)
    assert admission.queued == 1
    release.set()
    assert await staying >= 0.0
    await first
    assert admission.active == 0


def test_the_token_meter_counts_a_sliding_window() -> None:
    meter = TokenMeter(window_s=10.0)
    for second in range(20):
        meter.add(now=float(second))
    assert meter.rate(now=19.5) == pytest.approx(1.0)
    assert meter.rate(now=100.0) == 0.0 and meter.total == 20


async def test_closing_while_a_queued_client_goes_away_keeps_the_count_true() -> None:
    """close() refuses a queued request as its client disconnects in the same tick: the request
    held no slot, so none may be given back (the stop's drain waits on `active`)."""
    admission = Admission(capacity=1, queue_bound=4)
    release = asyncio.Event()

    async def request() -> None:
        async with admission.slot():
            await release.wait()

    generating = asyncio.create_task(request())
    await asyncio.sleep(0)
    queued = asyncio.create_task(request())
    await asyncio.sleep(0.01)
    assert admission.active == 1 and admission.queued == 1
    admission.close()
    queued.cancel()
    with pytest.raises((asyncio.CancelledError, ShuttingDown)):
        await queued
    assert admission.active == 1  # the one still generating
    release.set()
    await generating
    assert admission.active == 0
