"""What a hostile record, certificate or request can no longer do (pure logic and the codec).

Each attack here worked on the code before the cluster secret and signed records: a record of
`unit_ms` inf killed the receiving peer, a record could claim another peer's id, an obituary
with a huge clock banned a peer forever.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import msgpack
import pytest
from aiohttp import Fingerprint
from edgeshard.discovery.auth import WINDOW_S, Authenticator, SecretError, read_secret, write_secret
from edgeshard.discovery.membership import TOMBSTONE_S, Membership
from edgeshard.discovery.records import (
    MAX_PEERS,
    LinkMeasure,
    PeerId,
    PeerRecord,
    RecordError,
    decode_exchange,
    decode_records,
    encode_exchange,
    encode_records,
    sign_record,
)
from edgeshard.discovery.tls import certificate, pins

from .signed import peer, signed, signer


@pytest.mark.parametrize(
    "changes",
    [
        {"unit_ms": (math.inf, 1.0, 1.0, 1.0)},
        {"unit_ms": (math.nan, 1.0, 1.0, 1.0)},
        {"unit_ms": (0.0, 0.0, 0.0, 0.0)},
        {"unit_ms": (-1.0, 1.0, 1.0, 1.0)},
        {"unit_ms": ()},
        {"prefill_ms": (1.0,)},
        {"links": (LinkMeasure(peer("b"), 0.0, 0.4),)},
        {"links": (LinkMeasure(peer("b"), math.inf, 0.4),)},
        {"links": (LinkMeasure(peer("b"), 100.0, math.nan),)},
        {"memory_bytes": 2**62},
        {"incarnation": 2**63},
        {"address": "http://198.18.0.1"},
        {"address": "file:///etc/passwd"},
        {"address": "http://198.18.0.1:7420/stage?x=1"},
        {"name": "bad name with spaces"},
        {"cluster": "x" * 500},
        {"batch_scale": (math.inf,)},
        {"pass_ms": -1.0},
        {"pass_ms": math.nan},
        {"address": "https://198.18.0.2:7420", "cert": "zz"},
        {"address": "http://[::1:80"},
    ],
    ids=lambda changes: ",".join(f"{k}={str(v)[:24]}" for k, v in changes.items()),
)
def test_a_record_out_of_bounds_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(RecordError):
        decode_records(encode_records([signed("a", **changes)]))


def test_no_member_can_speak_for_another() -> None:
    genuine = signed("victim")
    # The attacker signs a record with the victim's id with its own key...
    forged = sign_record(
        PeerRecord(**{**_fields(genuine), "key": signer("attacker").public_key}), signer("attacker").sign
    )
    with pytest.raises(RecordError, match="not its key"):
        decode_records(encode_records([forged]))
    # ...or keeps the victim's key and changes a signed field (a higher incarnation, its own address).
    tampered = genuine.signed.replace(b"victim.local", b"evil00.local")
    with pytest.raises(RecordError, match="bad signature"):
        decode_records(msgpack.packb([[tampered, genuine.signature]]))
    assert decode_records(encode_records([genuine])) == [genuine]


def _fields(record: PeerRecord) -> dict[str, object]:
    return {k: getattr(record, k) for k in record.__dataclass_fields__ if k not in {"signed", "signature"}}


def test_an_exchange_is_bounded() -> None:
    many = {f"{i:016x}": [1, 1] for i in range(MAX_PEERS + 1)}
    with pytest.raises(RecordError):
        decode_exchange(msgpack.packb({"d": many, "r": [], "x": []}))
    with pytest.raises(RecordError):
        decode_exchange(msgpack.packb({"d": {"a": [2**63, 1]}, "r": [], "x": []}))


def test_a_peer_refutes_a_newer_record_of_itself_and_keeps_the_incarnation() -> None:
    kept: list[int] = []
    me = Membership(signed("me", 5), sign=lambda r: sign_record(r, signer("me").sign), on_incarnation=kept.append)
    old_life = signed("me", 9, 40)  # a previous life of ours (say a restored state directory)
    assert me.apply([old_life], now=0.0) == []
    assert me.own.incarnation == 10 and kept == [10]
    assert me.own.clock > old_life.clock and me.own.signed  # re-signed
    # Our own current record echoed back changes nothing.
    assert me.apply([me.own], now=1.0) == [] and kept == [10]


def test_a_copied_key_is_reported_not_refuted(caplog: pytest.LogCaptureFixture) -> None:
    me = Membership(signed("me", 5))
    me.apply([signed("me", 9, address="http://198.18.0.99:7420")], now=0.0)
    assert me.own.incarnation == 5
    assert "uses this peer's key" in caplog.text


def test_an_obituary_counts_only_for_the_record_it_names() -> None:
    view = Membership(signed("a"))
    view.apply([signed("c", 2, 3)], now=0.0)
    # A certificate of c's previous life does not remove its present one.
    assert view.bury([signed("c", 1, 10**6)]) == []
    assert peer("c") in view.records
    # The certificate of the record held (or a later heartbeat of that life) does.
    assert view.bury([signed("c", 2, 3)]) == [peer("c")]


def test_tombstones_expire() -> None:
    view = Membership(signed("a"))
    view.apply([signed("c", 7, 3)], now=0.0)
    assert view.sweep(now=100.0) == [peer("c")]
    view.apply([signed("c", 7, 3)], now=101.0)  # a stale copy: still dead
    assert peer("c") not in view.records
    # c's state directory was restored from an old backup: its clock went backwards. After the
    # tombstone expires it is taken back (it is not banned forever).
    view.apply([signed("c", 3, 0)], now=100.0 + TOMBSTONE_S + 1)
    assert peer("c") in view.records


def test_the_view_is_bounded() -> None:
    view = Membership(signed("a"))
    plain = [
        PeerRecord(PeerId(f"{i:016x}"), 1, 0, f"http://198.18.1.{i % 250}:7420", "home", "m", 1, (1.0,))
        for i in range(MAX_PEERS + 10)
    ]
    view.apply(plain, now=0.0)
    assert len(view.records) == MAX_PEERS


# --- the cluster secret ----------------------------------------------------------------------


def test_requests_are_signed_checked_and_never_replayed() -> None:
    clock = [1_000_000.0]
    member, other = Authenticator(b"k" * 32, lambda: clock[0]), Authenticator(b"k" * 32, lambda: clock[0])
    stranger = Authenticator(b"s" * 32, lambda: clock[0])
    headers = member.sign("POST", "/gossip", b"body")
    header = headers["X-EdgeShard-Auth"]
    assert other.check("POST", "/gossip", header, b"body") is None
    assert other.check("POST", "/gossip", header, b"body") == "a replayed request"
    fresh = member.sign("POST", "/gossip", b"body")["X-EdgeShard-Auth"]
    assert other.check("POST", "/gossip", fresh, b"other body") is not None  # body bound
    assert other.check("POST", "/probe", fresh, b"body") is not None  # path bound
    assert other.check("GET", "/gossip", fresh, b"body") is not None  # method bound
    assert other.check("POST", "/gossip", None, b"body") is not None
    assert other.check("POST", "/gossip", "1.2.3", b"body") == "malformed credentials"
    wrong = stranger.sign("POST", "/gossip", b"body")["X-EdgeShard-Auth"]
    assert "another secret" in (other.check("POST", "/gossip", wrong, b"body") or "")
    late = member.sign("POST", "/gossip", b"body")["X-EdgeShard-Auth"]
    clock[0] += WINDOW_S + 1
    assert "clock" in (other.check("POST", "/gossip", late, b"body") or "")
    # Replies: only a member can sign one.
    request = member.sign("POST", "/gossip", b"q")
    assert member.check_reply(
        request, other.sign_reply(request["X-EdgeShard-Auth"], b"answer")["X-EdgeShard-Reply"], b"answer"
    )
    forged = stranger.sign_reply(request["X-EdgeShard-Auth"], b"answer")["X-EdgeShard-Reply"]
    assert not member.check_reply(request, forged, b"answer")
    assert not member.check_reply(request, None, b"answer")


def test_an_open_cluster_signs_and_checks_nothing() -> None:
    open_ = Authenticator(None)
    assert open_.sign("POST", "/gossip", b"x") == {}
    assert open_.check("POST", "/gossip", None, b"x") is None


def test_the_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.secret"
    write_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = read_secret(path)
    assert len(secret) == 32
    with pytest.raises(SecretError, match="exists"):
        write_secret(path)
    write_secret(path, force=True)
    assert read_secret(path) != secret
    os.chmod(path, 0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        read_secret(path)
    (tmp_path / "junk").write_text("hello")
    os.chmod(tmp_path / "junk", 0o600)
    with pytest.raises(SecretError, match="not a cluster secret"):
        read_secret(tmp_path / "junk")
    with pytest.raises(SecretError, match="edgeshard init"):
        read_secret(tmp_path / "missing")


def test_signed_obituaries_travel_in_exchanges() -> None:
    body = encode_exchange({}, [], [signed("c", 1, 5)])
    assert decode_exchange(body).obituaries == [signed("c", 1, 5)]


def test_tls_certificates_are_made_once_and_pinned(tmp_path: Path) -> None:
    _context, fingerprint = certificate(tmp_path)
    assert stat.S_IMODE((tmp_path / "tls.key").stat().st_mode) == 0o600
    assert certificate(tmp_path)[1] == fingerprint  # kept, not remade
    pin = pins(lambda: [("https://198.18.0.2:7420", fingerprint)])
    assert isinstance(pin("https://198.18.0.2:7420/origin/stage"), Fingerprint)
    assert pin("https://198.18.0.3:7420") is False  # a first contact: encrypted, not yet pinned
    assert pin("http://198.18.0.3:7420") is True


def test_credentials_from_strangers_never_raise_and_replays_stay_refused() -> None:
    clock = [1_000_000.0]
    member, other = Authenticator(b"k" * 32, lambda: clock[0]), Authenticator(b"k" * 32, lambda: clock[0])
    odd = "1." + "a" * 24 + "." + "b" * 64 + "." + "é" * 64  # non-ASCII where hex digits go
    assert other.check("POST", "/gossip", odd, b"") == "malformed credentials"
    request = member.sign("POST", "/gossip", b"q")
    assert not member.check_reply(request, "é" * 64, b"answer")
    # A request stamped 30 s ahead of our clock stays valid until then + the window: its nonce
    # must be remembered that long, or a replay at +61 s would pass.
    ahead = Authenticator(b"k" * 32, lambda: clock[0] + 30)
    header = ahead.sign("POST", "/gossip", b"x")["X-EdgeShard-Auth"]
    assert other.check("POST", "/gossip", header, b"x") is None
    clock[0] += WINDOW_S + 1
    assert other.check("POST", "/gossip", header, b"x") == "a replayed request"
    # The header is checked before the body: a wrong body is caught after.
    fresh = member.sign("POST", "/gossip", b"x")["X-EdgeShard-Auth"]
    assert other.check("POST", "/gossip", fresh, b"y") == "the body is not the one signed"


def test_an_address_claimed_with_two_certificates_is_pinned_to_nothing(tmp_path: Path) -> None:
    _context, real = certificate(tmp_path)
    pin = pins(lambda: [("https://198.18.0.2:7420", real), ("https://198.18.0.2:7420", "f" * 64)])
    chosen = pin("https://198.18.0.2:7420")
    assert isinstance(chosen, Fingerprint) and chosen.fingerprint == bytes(32)
