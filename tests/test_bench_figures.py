"""The paper benchmark's figures (scripts/bench/paper_testbed.py): measured on a dilated testbed,
reported in the devices' time, and the mean absolute percentage error of the predictions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # dilation.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "bench"))
from dilation import Dilation
from paper_testbed import PaperRow
from throughput import Row, mape


def test_mape_is_the_mean_error_as_a_share_of_what_was_measured() -> None:
    assert mape([(110.0, 100.0), (45.0, 50.0)]) == pytest.approx(0.10)
    assert mape([(1.0, 0.0)]) is None and mape([]) is None
    assert mape([(0.0, 4.0), (4.0, 4.0)]) == pytest.approx(0.5)


def test_a_dilated_rows_figures_come_back_in_the_devices_time() -> None:
    # Dilated 10x: one session's tokens came 2 s apart on the testbed, the planner predicted
    # 0.4 tokens/s; 8 sessions made 40 tokens in 10 s against 5 predicted.
    latency = Row("x", 1, 10, 20.0, gaps_s=[1.9, 2.0, 2.1], predicted_tps=0.4)
    throughput = Row("x", 8, 40, 10.0, predicted_tps=5.0)
    row = PaperRow("x", "h1[0:32)", latency, throughput, Dilation(10))
    assert row.ms == pytest.approx(200.0) and row.predicted_ms == pytest.approx(250.0)
    assert row.tps == pytest.approx(40.0) and row.predicted_tps == pytest.approx(50.0)
    assert mape(row.pairs()) == pytest.approx((0.25 + 0.25) / 2)
    undilated = PaperRow("x", "h1[0:32)", latency, throughput, Dilation(1))
    assert undilated.ms == pytest.approx(2000.0) and undilated.tps == pytest.approx(4.0)
    assert mape(undilated.pairs()) == mape(row.pairs())  # dilation scales both sides alike
