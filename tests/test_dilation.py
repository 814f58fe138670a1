"""Time dilation's arithmetic (scripts/dilation.py): what a dilated testbed runs, and how its
figures come back to the devices' own time."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from dilation import Dilation, choose_factor, contention_error, delay_ms, dilate_testbed, rate_bits


def test_tc_rates_and_delays_are_read_as_tc_and_netem_write_them() -> None:
    assert rate_bits("950mbit") == 950e6 and rate_bits("10Mbit") == 10e6 and rate_bits("1gbit") == 1e9
    assert rate_bits("125kbps") == 1e6  # bytes per second, as tc reads "bps"
    assert delay_ms("2.1ms") == 2.1 and delay_ms("500us") == 0.5 and delay_ms("1s") == 1000 and delay_ms("3") == 3
    for bad in ("fast", "10", "1parsec"):
        with pytest.raises(ValueError):
            rate_bits(bad)
    with pytest.raises(ValueError):
        delay_ms("soon")


def test_a_dilated_host_runs_d_times_slower_on_every_count() -> None:
    d = Dilation(10)
    assert d.slowdown(6.663) == pytest.approx(66.63) and d.slowdown() == 10
    assert d.rate("950mbit") == "95000kbit" and d.rate("10mbit") == "1000kbit"
    assert rate_bits(d.rate("950mbit")) * 10 == pytest.approx(950e6)
    assert d.link("delay 2.1ms rate 950mbit loss 1%") == "delay 21ms rate 95000kbit loss 1%"
    assert d.link("rate 10mbit") == "rate 1000kbit"
    assert d.delay_ms(2.1) == pytest.approx(21)
    assert Dilation(1).link("delay 1ms rate 1gbit") == "delay 1ms rate 1000000kbit"
    assert Dilation(1e9).rate("1mbit") == "1kbit"  # never a zero rate


def test_figures_come_back_by_the_same_factor() -> None:
    d = Dilation(8)
    assert d.seconds(1.6) == pytest.approx(0.2)  # 1.6 s per token measured: 200 ms on the devices
    assert d.per_second(2.5) == pytest.approx(20)  # tokens/s
    with pytest.raises(ValueError):
        Dilation(0.5)


def test_the_factor_keeps_what_sharing_the_cores_adds_within_the_tolerance() -> None:
    # The paper's testbed here: three Jetsons (6.66x, 6.66x, 7.60x) and the 3090 at this
    # machine's speed, each peer of 2 threads on 2 cores. Undilated, the Orin NX host's time
    # grows by the others' duty: (1/6.66 + 1/6.66 + 1/1) x (2 x 2 / 2 - 1) = 130%.
    paper = [6.663, 6.663, 7.6, 1.0]
    assert contention_error(1, paper, 2, 2) == pytest.approx(2 / 6.663 + 1)
    assert contention_error(4, paper, 2, 2) == pytest.approx(contention_error(1, paper, 2, 2) / 4)  # as 1/D
    factor = choose_factor(paper, cores=2, threads=2, tolerance=0.05)
    assert factor == 27
    assert contention_error(factor, paper, 2, 2) <= 0.05 < contention_error(factor - 1, paper, 2, 2)
    assert choose_factor(paper, cores=4, threads=2) == 1  # a core for every thread of two hosts
    assert choose_factor([1.0] * 4, cores=2, threads=2, tolerance=0.05) == 60  # four fast hosts: 3/D
    assert choose_factor([1.0] * 4, cores=2, threads=2, tolerance=0.05, limit=16) == 16
    with pytest.raises(ValueError):
        contention_error(0.5, paper, 2, 2)


def test_a_dilated_testbed_without_netem_delays_in_the_peers() -> None:
    hosts = ["h1", "h2", "h3"]
    links = {frozenset(("h1", "h3")): "rate 10mbit", frozenset(("h1", "h2")): "delay 5ms rate 100mbit"}
    bed = dilate_testbed(hosts, "delay 2.1ms rate 950mbit", links, {"h2": 6.0}, 10, netem=False)
    assert bed.default == "delay 21ms rate 95000kbit"
    assert bed.links[frozenset(("h1", "h3"))] == "rate 1000kbit"
    assert bed.slowdown == {"h1": 10.0, "h2": 60.0, "h3": 10.0}
    assert bed.delay_ms == pytest.approx({"h1": 21.0, "h2": 21.0, "h3": 21.0})
    assert bed.warnings == (
        "h1-h2: delay 5 ms emulated as the default's 2.1 ms",
        "h1-h3: delay 0 ms emulated as the default's 2.1 ms",
    )
    with_netem = dilate_testbed(hosts, "delay 2.1ms rate 950mbit", {}, {}, 1, netem=True)
    assert with_netem.delay_ms == {"h1": 0.0, "h2": 0.0, "h3": 0.0} and with_netem.warnings == ()
    assert with_netem.default == "delay 2.1ms rate 950000kbit" and with_netem.slowdown["h1"] == 1.0
