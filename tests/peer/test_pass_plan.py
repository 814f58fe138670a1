"""The plan of one pass (batch.py): which decode passes read and write the stacked rows as they
are (dense: no gather or scatter) and which need a length mask."""

from __future__ import annotations

import torch
from edgeshard.peer.model.batch import Slice, plan_pass

CPU = torch.device("cpu")


def _decode(slots: list[int], positions: list[int]) -> list[Slice]:
    return [
        Slice(offset, 1, position, slot) for offset, (slot, position) in enumerate(zip(slots, positions, strict=True))
    ]


def test_sessions_filling_their_slots_in_order_pass_dense_and_equal_lengths_need_no_mask() -> None:
    plan = plan_pass(_decode([3, 4, 5], [9, 9, 9]), CPU)
    assert plan.decode is not None and plan.decode.dense and plan.decode.mask is None
    assert (plan.decode.low, plan.decode.high, plan.decode.keys) == (3, 6, 10)
    assert plan.positions.tolist() == [9, 9, 9]


def test_unequal_lengths_are_masked_each_to_its_own() -> None:
    plan = plan_pass(_decode([0, 1], [4, 2]), CPU)
    assert plan.decode is not None and plan.decode.dense and plan.decode.mask is not None
    assert plan.decode.mask[:, 0, 0].tolist() == [[True] * 5, [True] * 3 + [False] * 2]


def test_a_gap_or_another_order_or_a_prompt_in_the_pass_is_not_dense() -> None:
    gap = plan_pass(_decode([0, 2], [4, 4]), CPU).decode
    assert gap is not None and not gap.dense and gap.mask is not None  # slot 1 is in range, not in the pass
    assert gap.mask[1, 0, 0].tolist() == [True, False, False, False, False]
    swapped = plan_pass(_decode([1, 0], [4, 4]), CPU).decode
    assert swapped is not None and not swapped.dense and swapped.in_range.tolist() == [1, 0]
    mixed = plan_pass([Slice(0, 1, 4, 0), Slice(1, 3, 0, 1)], CPU)
    assert mixed.decode is not None and not mixed.decode.dense
    assert mixed.decode.mask is None  # one decode session alone in its range
    assert mixed.positions.tolist() == [4, 0, 1, 2] and [p.slot for p in mixed.prompts] == [1]


def test_a_pass_of_prompts_alone_has_no_decode_rows() -> None:
    plan = plan_pass([Slice(0, 2, 0, 0), Slice(2, 2, 5, 1)], CPU)
    assert plan.decode is None and plan.positions.tolist() == [0, 1, 5, 6]
