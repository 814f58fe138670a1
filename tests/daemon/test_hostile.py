"""A cluster on a LAN that is not trusted: strangers are refused, hostile input takes nothing down.

Three real edgeshard-peer processes holding a cluster secret (as the installed service does),
their peer traffic encrypted (--tls: each certificate pinned through the signed records).
The attacks of the security report are replayed against them as a stranger and as a member gone
bad; then a fuzz run throws 10,000 malformed and hostile inputs at one peer's every port and
checks that it is still up, its memory and open files did not grow, the plan did not change,
and it still answers.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import psutil
import pytest
from edgeshard.discovery.auth import Authenticator, read_secret
from edgeshard.discovery.records import PeerId, PeerRecord, encode_exchange, sign_record
from edgeshard.discovery.signing import Signer
from edgeshard.peer import wire
from edgeshard.peer.wire import Close, Hidden, InputIds, Open, SamplingParams

from .peers import Peer, agreed, client, make_peers, running, wait_until

pytestmark = pytest.mark.slow

FUZZ_INPUTS = 10_000
QUESTION = "Name three colours."


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Peer]]:
    with running(make_peers(tmp_path_factory.mktemp("hostile"), 3, extra=["--tls"])) as peers:
        yield peers


def unpinned() -> aiohttp.ClientSession:
    """A client of the peers' TLS ports that does not check their certificates (as a stranger)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False), timeout=aiohttp.ClientTimeout(total=30))


def secret_of(peer: Peer) -> bytes:
    return read_secret(Path(peer.args[peer.args.index("--secret-file") + 1]))


def layout(peers: list[Peer]) -> str:
    plan = wait_until(lambda: agreed(peers), 60, "the peers to agree", peers)
    return str(plan["layout_id"])


def member_record(peer: Peer, key: Signer, **changes: Any) -> PeerRecord:
    """A record as a member gone bad would send: well signed by its own key, hostile inside."""
    status = peer.status()
    assert status is not None
    fields: dict[str, Any] = dict(
        peer_id=PeerId(key.peer_id),
        incarnation=1,
        heartbeat=1,
        address="http://127.0.0.1:9",
        cluster=peer.args[peer.args.index("--cluster") + 1],
        model=status["model"]["fingerprint"],
        memory_bytes=2**40,
        unit_ms=tuple(0.001 for _ in range(32)),
        name="evil",
        key=key.public_key,
    )
    fields.update(changes)
    return sign_record(PeerRecord(**fields), key.sign)


async def post(session: aiohttp.ClientSession, url: str, body: bytes, auth: Authenticator | None) -> int:
    path = "/" + url.split("/", 3)[3]
    headers = auth.sign("POST", path, body) if auth else {}
    async with session.post(url, data=body, headers=headers) as response:
        await response.read()
        return response.status


def test_a_stranger_without_the_secret_never_joins(cluster: list[Peer], tmp_path: Path) -> None:
    before = layout(cluster)
    cluster_name = cluster[0].args[cluster[0].args.index("--cluster") + 1]
    # One stranger with no secret (an open peer), one with another cluster's secret; both find the
    # members over mDNS, as a device on the same LAN would, and gossip at them.
    (tmp_path / "open").mkdir()
    (tmp_path / "other").mkdir()
    open_peer = make_peers(tmp_path / "open", 1, cluster=cluster_name, names=["stranger"], open_cluster=True)[0]
    wrong = make_peers(tmp_path / "other", 1, cluster=cluster_name, names=["wrongsecret"])[0]
    strangers = [open_peer, wrong]
    try:
        for stranger in strangers:
            stranger.start()
        wait_until(lambda: all(s.status() for s in strangers), 180, "the strangers to start", strangers)
        wait_until(
            lambda: all(p.status()["security"]["refused"] for p in cluster) or None,  # type: ignore[index]
            60,
            "every member to refuse the strangers",
            cluster,
        )
        time.sleep(5)  # several more gossip rounds
        for peer in cluster:
            status = peer.status()
            assert status is not None
            assert {p["name"] for p in status["peers"]} == {"p1", "p2", "p3"}
            assert status["security"]["mode"] == "secret" and status["security"]["tls"]
            # Logged once per host, counted after that.
            assert peer.log().count("refused a request from 127.0.0.1") == 1
        assert layout(cluster) == before
        for stranger in strangers:
            status = stranger.status()
            assert status is not None and {p["name"] for p in status["peers"]} == {stranger.name}
        open_status = open_peer.status()
        assert open_status is not None and open_status["security"]["mode"] == "open"
        assert "OPEN CLUSTER" in open_status["security"]["warning"] and "OPEN CLUSTER" in open_peer.log()
    finally:
        for stranger in strangers:
            stranger.stop()


def test_the_reported_attacks_fail(cluster: list[Peer]) -> None:
    before = layout(cluster)
    target = cluster[1]
    base = f"https://{target.address}"
    member = Authenticator(secret_of(target))
    victim = target.status()
    assert victim is not None

    async def attacks() -> None:
        async with unpinned() as session:
            # Plain http to the TLS port gets nowhere.
            with pytest.raises(aiohttp.ClientError):
                async with session.post(f"http://{target.address}/gossip", data=b"") as response:
                    await response.read()
            # A stranger's empty digest: refused, and no record comes back.
            async with session.post(base + "/gossip", data=encode_exchange({}, [])) as response:
                assert response.status == 401
                assert victim["model"]["fingerprint"].encode() not in await response.read()
            # A stranger's probe for 8 MiB: refused. A member's: capped at 1 MiB.
            async with session.get(base + "/probe?bytes=8388608") as response:
                assert response.status == 401
            path = "/probe?bytes=8388608"
            async with session.get(base + path, headers=member.sign("GET", path)) as response:
                assert response.status == 200 and len(await response.read()) == 2**20
            # A member's record with unit_ms inf (it killed the receiving peer), a link of 0 Mbps,
            # memory beyond any device: each exchange is refused whole.
            key = Signer()
            hostile = [
                member_record(target, key, unit_ms=(math.inf,) * 32),
                member_record(target, key, unit_ms=(math.nan,) * 32),
                member_record(target, key, links=(), memory_bytes=2**60),
            ]
            for record in hostile:
                body = encode_exchange({}, [record])
                assert await post(session, base + "/gossip", body, member) == 400
            # A record claiming the victim's id (to take over its address), signed by another key.
            forged = sign_record(
                PeerRecord(
                    **{
                        **{f: getattr(hostile[2], f) for f in ("cluster", "model", "unit_ms", "key", "name")},
                        "peer_id": PeerId(victim["peer"]),
                        "incarnation": 2**40,
                        "heartbeat": 0,
                        "address": "http://127.0.0.1:9",
                        "memory_bytes": 2**30,
                    }
                ),
                key.sign,
            )
            assert await post(session, base + "/gossip", encode_exchange({}, [forged]), member) == 400
            # A death certificate with a huge clock for a member, not signed by it.
            body = msgpack.packb({"d": {}, "r": [], "x": [[forged.signed, forged.signature]]})
            assert await post(session, base + "/gossip", body, member) == 400
            # An Open frame naming a route and an origin outside the cluster: refused before any dial.
            with socket.socket() as trap:
                trap.bind(("127.0.0.1", 0))
                trap.listen()
                trap.settimeout(3)
                elsewhere = f"http://127.0.0.1:{trap.getsockname()[1]}"
                headers = member.sign("GET", "/stage")
                async with session.ws_connect(base + "/stage", headers=headers) as ws:
                    frame = Open(
                        "s1", (base, elsewhere), 0, elsewhere + "/origin", victim["plan"]["layout_id"], SamplingParams()
                    )
                    await ws.send_bytes(wire.encode(frame))
                    reply = wire.decode((await ws.receive(timeout=10)).data)
                    assert isinstance(reply, wire.Error) and reply.code == "stale-plan", reply
                with pytest.raises(TimeoutError):
                    trap.accept()  # nobody dialled it

    asyncio.run(attacks())
    time.sleep(3)  # the peer that got inf used to die two seconds later
    for peer in cluster:
        assert peer.process is not None and peer.process.poll() is None
        assert "Traceback" not in peer.log()
    assert layout(cluster) == before
    assert {p["name"] for p in target.status()["peers"]} == {"p1", "p2", "p3"}  # type: ignore[index]


# --- fuzz ---------------------------------------------------------------------------------------


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if choice < 0.5 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.75:
            data[rng.randrange(len(data) + 1) : 0] = rng.randbytes(rng.randint(1, 16))
        elif data:
            del data[rng.randrange(len(data)) :]
    return bytes(data)


def _hostile_value(rng: random.Random) -> Any:
    return rng.choice(
        [math.inf, -math.inf, math.nan, -1, 0, 2**63 - 1, -(2**63), 1e308, "x" * 300, [], {}, None, b"\x00"]
    )


def _gossip_body(rng: random.Random, peer: Peer, key: Signer, valid: bytes) -> bytes:
    kind = rng.random()
    if kind < 0.3:
        return rng.randbytes(rng.randint(0, 300))
    if kind < 0.6:
        return _mutate(rng, valid)
    # Another cluster's name: should a mutation leave the record valid, the view ignores it.
    wire_record = msgpack.unpackb(member_record(peer, key, cluster="fuzz-elsewhere").signed)
    wire_record[rng.choice(list(wire_record))] = _hostile_value(rng)
    blob = msgpack.packb(wire_record)
    return msgpack.packb({"d": {}, "r": [[blob, key.sign(blob)]], "x": []})


def _frame(rng: random.Random, base: str, layout_id: str, hidden: int) -> bytes:
    kind = rng.random()
    session = rng.choice(["s", "x" * 200, "", "fuzz"])
    frames: list[Any] = [
        Open(session, (base,), 0, "http://198.18.9.9:1/origin", layout_id, SamplingParams()),
        InputIds(session, rng.randint(0, 10), (rng.randint(0, 2**31),)),
        Hidden(session, 0, "float32", (1, hidden), bytes(4 * hidden)),
        Close(session),
    ]
    data = wire.encode(rng.choice(frames))
    if kind < 0.3:
        return rng.randbytes(rng.randint(0, 200))
    if kind < 0.8:
        return _mutate(rng, data)
    return data


def _api_body(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.3:
        return rng.randbytes(rng.randint(0, 100))
    fields: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    field = rng.choice(["messages", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "model", "n"])
    fields[field] = _hostile_value(rng)
    if field == "max_tokens" and fields[field] is None:
        fields[field] = -1  # null is "the default": a valid request for hundreds of tokens, not hostile
    return json.dumps(fields, default=repr).encode()  # NaN and Infinity go as JSON extensions


def _resources(peer: Peer) -> tuple[int, int]:
    assert peer.process is not None
    process = psutil.Process(peer.process.pid)
    return process.memory_info().rss, process.num_fds()


def test_ten_thousand_hostile_inputs_take_nothing_down(cluster: list[Peer]) -> None:
    before = layout(cluster)
    target = cluster[0]
    base = f"https://{target.address}"
    status = target.status()
    assert status is not None
    member = Authenticator(secret_of(target))
    rng = random.Random(20261127)
    key = Signer()
    valid = encode_exchange({}, [member_record(target, key, cluster="fuzz-elsewhere")])
    hidden = 576
    rss_before, fds_before = _resources(target)
    samples: list[tuple[int, int]] = []  # (RSS, open files) after every 1000 inputs

    async def fuzz() -> None:
        async with unpinned() as session:

            async def link() -> aiohttp.ClientWebSocketResponse:
                socket_ = await session.ws_connect(base + "/stage", headers=member.sign("GET", "/stage"))
                drains.append(asyncio.create_task(drain(socket_)))  # read the error frames sent back
                return socket_

            async def drain(socket_: aiohttp.ClientWebSocketResponse) -> None:
                async for _message in socket_:
                    pass

            drains: list[asyncio.Task[None]] = []
            ws = await link()
            for index in range(FUZZ_INPUTS):
                what = index % 5
                if what == 0:  # a member gone bad: signed gossip, hostile inside
                    status_ = await post(session, base + "/gossip", _gossip_body(rng, target, key, valid), member)
                    assert status_ in (200, 400, 413), status_
                elif what == 1:  # a stranger: no or forged credentials, any path
                    path = rng.choice(["/gossip", "/probe?bytes=99999999", "/stage", "/origin/stage", "/x"])
                    headers = rng.choice(
                        [{}, {"X-EdgeShard-Auth": "1.2.3"}, Authenticator(b"w" * 32).sign("POST", path)]
                    )
                    async with session.post(base + path, data=rng.randbytes(64), headers=headers) as response:
                        assert response.status == 401, response.status
                elif what == 2:  # frames over a member's link
                    if ws.closed:
                        ws = await link()
                    await ws.send_bytes(_frame(rng, base, before, hidden))
                elif what == 3:  # probes with odd sizes, as a member
                    path = f"/probe?bytes={rng.choice(['-1', 'x', '1e9', '99999999999999999999', ''])}"
                    async with session.get(base + path, headers=member.sign("GET", path)) as response:
                        body = await response.read()
                        assert response.status in (200, 400) and len(body) <= 2**20
                else:  # the user API
                    request = _api_body(rng)
                    try:
                        async with session.post(target.api + "/v1/chat/completions", data=request) as response:
                            body = await response.read()
                            assert response.status < 500, body[:200]
                    except TimeoutError:
                        raise AssertionError(f"no answer to {request[:300]!r}") from None
                if index % 1000 == 999:
                    samples.append(_resources(target))
            await ws.close()
            for task in drains:
                task.cancel()

    started = time.monotonic()
    asyncio.run(fuzz())
    elapsed = time.monotonic() - started
    time.sleep(2)
    rss_after, fds_after = _resources(target)
    print(
        f"\n{FUZZ_INPUTS} inputs in {elapsed:.0f} s; RSS {rss_before / 2**20:.0f} → {rss_after / 2**20:.0f} MiB; "
        f"fds {fds_before} → {fds_after}"
    )
    for peer in cluster:
        assert peer.process is not None and peer.process.poll() is None
        assert "Traceback" not in peer.log()
    # Bounded, not merely small: the first inputs warm caches up (the allocator's arenas, the
    # sessions' first KV caches); the second half of the run must not keep growing.
    print("RSS every 1000 inputs (MiB):", [round(x / 2**20) for x, _ in samples])
    print("open files every 1000 inputs:", [n for _, n in samples])
    half = len(samples) // 2 - 1
    assert samples[-1][0] - samples[half][0] < 32 * 2**20
    assert rss_after - rss_before < 256 * 2**20
    # Open files go up and down with the connections in flight (a CI run saw 77..139 with no
    # trend), so the level is only bounded; a leak shows once the fuzzing clients have gone: the
    # count must come back to where it started.
    files = [n for _, n in samples]
    assert max(files) < 512
    settled = wait_until(lambda: n if (n := _resources(target)[1]) <= fds_before + 8 else None, 60, "files closed")
    print(f"open files once the clients left: {settled} (before: {fds_before})")
    assert layout(cluster) == before
    answer = client(target).chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=8,
    )
    assert answer.choices[0].message.content
    assert os.path.exists(target.log_path)
