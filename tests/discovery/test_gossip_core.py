"""Records, merge, failure detection and membership (pure logic)."""

from __future__ import annotations

import contextlib
import math
import random

import pytest
from edgeshard.discovery.failure import FailurePolicy, PhiAccrual
from edgeshard.discovery.forms import FormFigures
from edgeshard.discovery.membership import Membership
from edgeshard.discovery.records import (
    LinkMeasure,
    PeerId,
    PeerRecord,
    RecordError,
    decode_exchange,
    decode_records,
    digest,
    encode_exchange,
    encode_records,
    merge,
    newer_than,
)
from hypothesis import given
from hypothesis import strategies as st

from .signed import peer, record, signed

records = st.builds(record, st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 3), st.integers(0, 5))


@given(st.lists(records, max_size=12), st.lists(records, max_size=12), st.lists(records, max_size=12))
def test_merge_is_commutative_associative_idempotent(
    x: list[PeerRecord], y: list[PeerRecord], z: list[PeerRecord]
) -> None:
    def view(rs: list[PeerRecord]) -> dict[PeerId, PeerRecord]:
        return merge({}, rs)[0]

    def clocks(v: dict[PeerId, PeerRecord]) -> dict[PeerId, tuple[int, int]]:
        return {p: r.clock for p, r in v.items()}

    xy = merge(view(x), view(y).values())[0]
    yx = merge(view(y), view(x).values())[0]
    assert clocks(xy) == clocks(yx)
    left = merge(xy, view(z).values())[0]
    right = merge(view(x), merge(view(y), view(z).values())[0].values())[0]
    assert clocks(left) == clocks(right)
    assert clocks(merge(xy, xy.values())[0]) == clocks(xy)


@pytest.mark.parametrize("peers", [20, 40, 80])
def test_push_pull_converges_in_logarithmic_rounds(peers: int) -> None:
    rng = random.Random(peers)
    views = [{PeerId(f"p{i:03d}"): record(f"p{i:03d}")} for i in range(peers)]
    rounds = 0
    while any(len(v) < peers for v in views):
        rounds += 1
        for i in range(peers):
            j = rng.randrange(peers - 1)
            j += j >= i
            # push-pull: exchange digests, then each sends what the other lacks
            to_j = newer_than(views[i], digest(views[j]))
            to_i = newer_than(views[j], digest(views[i]))
            views[j] = merge(views[j], to_j)[0]
            views[i] = merge(views[i], to_i)[0]
        assert rounds < 50
    assert rounds <= 2 * math.ceil(math.log2(peers)) + 2


def test_codec_round_trips_and_rejects_garbage() -> None:
    rs = [
        signed("a", links=(LinkMeasure(peer("b"), 940.0, 0.4),), serving="plan1", source=True, prefill_ms=(1, 9, 9, 5)),
        signed("b", 2, 7, unit_bytes=(30_000_000, 2_400_000, 2_400_000, 46_000_000)),
    ]
    assert decode_records(encode_records(rs)) == rs
    exchange = decode_exchange(encode_exchange(digest({r.peer_id: r for r in rs}), rs, [signed("c", 3, 4)]))
    assert (exchange.records, exchange.obituaries) == (rs, [signed("c", 3, 4)])
    assert exchange.digest == {peer("a"): (1, 0), peer("b"): (2, 7)}
    for bad in (b"\xc1", encode_records([]) + b"x", b"\x91\x01"):
        with pytest.raises(RecordError):
            decode_records(bad)


@pytest.mark.parametrize("sizes", [(1, 2, 3), (0, 1, 1, 1), (1.5, 1, 1, 1), (2**60, 1, 1, 1)])
def test_unit_sizes_are_one_positive_integer_per_unit(sizes: tuple[float, ...]) -> None:
    with pytest.raises(RecordError, match="ub"):
        decode_records(encode_records([signed("a", unit_bytes=sizes)]))


def test_the_forms_a_peer_offers_travel_in_its_record() -> None:
    int8 = FormFigures("int8", (0.2, 3.0, 3.0, 1.5), (8_000_000, 600_000, 600_000, 9_000_000), (1.0, 1.9))
    offering = signed("a", form="float32", forms=(int8,), units=(0, 4), units_form="int8", serving="l1")
    assert decode_records(encode_records([offering])) == [offering]
    waking = signed("a", pass_ms=7.25)  # a pass after waiting costs this much more
    assert decode_records(encode_records([waking]))[0].pass_ms == 7.25


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"form": "Float32"}, "fm"),
        ({"units_form": "int 8"}, "uf"),
        ({"forms": (FormFigures("int8", (1.0, 1.0, 1.0)),)}, "fx unit_ms"),
        ({"forms": (FormFigures("int8", (0.0,) * 4),)}, "fx unit_ms"),
        ({"forms": (FormFigures("int8", (1.0,) * 4, (1, 2)),)}, "fx unit_bytes"),
        ({"forms": (FormFigures("int8", (1.0,) * 4, (), (0.0,)),)}, "fx batch_scale"),
        ({"form": "int8", "forms": (FormFigures("int8", (1.0,) * 4),)}, "fx"),  # its own form again
        ({"forms": tuple(FormFigures(f"f{i}", (1.0,) * 4) for i in range(9))}, "fx"),
    ],
)
def test_malformed_forms_are_the_senders_fault(changes: dict[str, object], field: str) -> None:
    with pytest.raises(RecordError, match=field):
        decode_records(encode_records([signed("a", **changes)]))


@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    with contextlib.suppress(RecordError):
        decode_records(data)


def test_a_busy_peer_is_suspected_not_killed() -> None:
    detector, policy = PhiAccrual(), FailurePolicy(suspect_phi=8, dead_after_s=10)
    for second in range(30):
        detector.heartbeat(float(second))  # one heartbeat a second
    assert policy.health(detector, 29.5) == "alive"
    assert policy.health(detector, 33.0) == "suspect"  # a 4 s forward pass: suspect only
    detector.heartbeat(33.5)
    assert policy.health(detector, 34.0) == "alive"
    assert policy.health(detector, 43.5) == "dead"


def test_membership_has_no_ghosts_and_takes_rejoins() -> None:
    me = Membership(record("me"), FailurePolicy(dead_after_s=10))
    me.apply([record("b", 1, 1)], now=0.0)
    assert me.sweep(now=5.0) == []
    assert me.sweep(now=11.0) == ["b"]
    assert [r.peer_id for r in me.view()] == ["me"]
    me.apply([record("b", 1, 1)], now=12.0)  # a stale copy gossiped by someone else
    assert [r.peer_id for r in me.view()] == ["me"]
    me.apply([record("b", 2, 0)], now=13.0)  # b restarted: higher incarnation
    assert [r.peer_id for r in me.view()] == ["b", "me"]
    assert me.health(now=14.0)["b"] == "alive"


def test_a_certified_death_spreads_and_a_restart_outlives_it() -> None:
    a, b = Membership(record("a")), Membership(record("b"))
    for view in (a, b):
        view.apply([record("c", 1, 5)], now=0.0)
    assert a.confirm_dead(PeerId("c"))  # c's port refused a's connection
    assert not a.confirm_dead(PeerId("a"))  # never ourselves
    assert b.bury(a.obituaries.values()) == ["c"]
    assert "c" not in b.records and b.obituaries["c"].clock == (1, 5)  # the exact record, passed on
    b.apply([record("c", 1, 5)], now=1.0)  # a stale copy still in circulation: no ghost
    assert "c" not in b.records
    newer = Membership(record("d"))
    newer.apply([record("c", 2, 0)], now=0.0)  # c restarted before the certificate arrived
    assert newer.bury(a.obituaries.values()) == [] and "c" in newer.records
