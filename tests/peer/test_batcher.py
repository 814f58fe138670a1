"""The batcher's pass cutting (pure logic): every ready step by default, one group's share of
the open sessions when it is the entry stage of a pipelined throughput plan."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from edgeshard.peer.model.shard import Step
from edgeshard.peer.pipeline.batcher import Batcher, group_size


async def _never(_steps: Sequence[Step]) -> None:
    raise AssertionError("take() alone must not run a pass")


async def _nowhere(_steps: Sequence[Step], _result: None) -> None:
    raise AssertionError("take() alone must not deliver")


def _batcher(open_sessions: list[int] | None = None, max_batch: int = 16) -> Batcher[None]:
    counted = (lambda: open_sessions[0]) if open_sessions is not None else None
    return Batcher(_never, _nowhere, max_batch=max_batch, max_rows=64, open_sessions=counted)


def _fill(batcher: Batcher[None], count: int, rows: int = 1, start: int = 0) -> None:
    for index in range(start, start + count):
        batcher._ready[f"s{index}"] = Step(f"s{index}", 0, torch.zeros(rows, dtype=torch.long))


def test_group_size_splits_as_evenly_as_it_can() -> None:
    assert [group_size(n, 3) for n in (0, 1, 2, 3, 4, 8, 9, 16)] == [1, 1, 1, 1, 2, 3, 3, 6]
    assert group_size(8, 1) == 8 and group_size(8, 0) == 8


def test_one_group_takes_every_ready_step_within_the_bounds() -> None:
    batcher = _batcher(max_batch=5)
    _fill(batcher, 8)
    assert [s.session for s in batcher.take()] == ["s0", "s1", "s2", "s3", "s4"]
    assert [s.session for s in batcher.take()] == ["s5", "s6", "s7"]
    _fill(batcher, 3, rows=40)  # 64 rows at most, but the first step always goes
    assert len(batcher.take()) == 1 and len(batcher.take()) == 1 and len(batcher.take()) == 1


def test_the_entry_stage_cuts_the_open_sessions_into_groups_in_arrival_order() -> None:
    open_now = [8]
    batcher = _batcher(open_now)
    batcher.groups = 3
    _fill(batcher, 8)  # eight sessions, all ready at once (a burst of arrivals): 3, 3, 2
    assert [[s.session for s in batcher.take()] for _ in range(3)] == [
        ["s0", "s1", "s2"],
        ["s3", "s4", "s5"],
        ["s6", "s7"],
    ]
    # Sessions come and go: with 16 open the groups grow to 6, with 2 open each goes alone.
    open_now[0] = 16
    _fill(batcher, 10)
    assert len(batcher.take()) == 6 and len(batcher.take()) == 4
    open_now[0] = 2
    _fill(batcher, 2)
    assert len(batcher.take()) == 1 and len(batcher.take()) == 1
    assert batcher.waiting == 0


def test_groups_never_exceed_max_batch_nor_count_fewer_sessions_than_wait() -> None:
    batcher = _batcher([0], max_batch=4)  # the route table lags: the waiting steps still count
    batcher.groups = 2
    _fill(batcher, 12)
    assert [len(batcher.take()) for _ in range(3)] == [4, 4, 2]  # 12 waiting, then 4: groups of 2
