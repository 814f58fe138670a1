"""Where a token's time went: the origin's reading of the stages' traces (pure)."""

from __future__ import annotations

import pytest
from edgeshard.peer.pipeline.timing import Predicted, StepTiming, summarize
from edgeshard.peer.wire import StageTime

ROUTE = ("http://a", "http://b")


def step(sent: float, skew_b: float, prefill: bool = False) -> StepTiming:
    """A step: 1 ms to a, a holds 10 ms (2 queue, 7 compute), 3 ms to b, b holds 20 ms, 1 ms back;
    b's wall clock runs `skew_b` seconds ahead of everyone else's."""
    a = StageTime(sent + 0.001, 0.002, 0.007, 0.010)
    b = StageTime(sent + 0.014 + skew_b, 0.0, 0.019, 0.020)
    return StepTiming(ROUTE, sent, sent + 0.035, prefill, (a, b))


def test_per_stage_and_per_link_means_over_the_decode_steps() -> None:
    steps = [step(0.0, 0.0, prefill=True), step(1.0, 0.0), step(2.0, 0.0)]
    summary = summarize(steps, {"http://a": "jetson"}, Predicted((5.0, 15.0), (2.0, 1.0)))
    assert summary is not None
    assert summary["steps"] == 2 and summary["ttft_ms"] == pytest.approx(35.0)
    assert summary["ms_per_token"] == pytest.approx(35.0)
    a, b = summary["stages"]
    assert (a["device"], a["queue_ms"], a["compute_ms"], a["other_ms"]) == ("jetson", 2.0, 7.0, 1.0)
    assert b["device"] is None and b["compute_ms"] == pytest.approx(19.0)
    assert [link["transfer_ms"] for link in summary["links"]] == pytest.approx([1.0, 3.0, 1.0])
    assert [link["from"] for link in summary["links"]] == ["origin", "jetson", "http://b"]
    assert [link["predicted_ms"] for link in summary["links"]] == [None, 2.0, 1.0]
    assert summary["predicted_ms_per_token"] == pytest.approx(23.0)


def test_clock_skew_moves_time_between_links_but_never_changes_their_sum() -> None:
    skewed = summarize([step(0.0, 0.5), step(1.0, 0.5)])
    assert skewed is not None
    transfers = [link["transfer_ms"] for link in skewed["links"]]
    assert transfers[1] == pytest.approx(503.0) and transfers[2] == pytest.approx(-499.0)
    assert skewed["transfer_ms"] == pytest.approx(5.0)  # wall 35 − holds 30, whatever the clocks say


def test_no_trace_no_summary_and_only_the_last_route_counts() -> None:
    assert summarize([StepTiming(ROUTE, 0.0, 1.0, False, ())]) is None
    old = StepTiming(("http://x",), 0.0, 9.0, False, (StageTime(0.0, 0.0, 8.0, 8.0),))
    summary = summarize([old, step(1.0, 0.0)])
    assert summary is not None and summary["steps"] == 1 and len(summary["stages"]) == 2
