"""Peers with different weight forms in one cluster (real processes): the int4 peer publishes
its smaller units, the others plan with them, and it takes (nearly) the whole model where float32
peers of the same memory need three; and a peer offering two forms holds its stage in the one
the plan gives it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .peers import Peer, client, make_peers, running

pytestmark = pytest.mark.slow


def ask(peer: Peer) -> Any:
    """A short greedy chat completion through the peer's API."""
    messages = [{"role": "user", "content": "Name a colour."}]
    return client(peer).chat.completions.create(
        model="smollm2-135m-instruct", messages=messages, temperature=0, max_tokens=8
    )


def test_a_peer_holding_int4_weights_takes_the_model_that_three_float32_peers_split(tmp_path: Path) -> None:
    peers = make_peers(tmp_path, 3, mdns=False)
    # The last flag wins: p1 holds int4, the others float32. p1 measures itself here: an int4
    # profile cached by an earlier test may have been taken while other peers loaded the cores.
    peers[0].args += ["--weights", "int4", "--reprofile"]
    for peer in peers:  # no prefix cache: the sizes below are of weights and session caches alone
        peer.args += ["--prefix-cache", "0"]
    # Three peers profiling at once on 2 cores measure anything, and the float32 profiles may come
    # from the cache (measured alone) while p1 measures under load; int4 at batch 1 is not faster
    # than float32 here. A slowdown of 6 was overturned once on CI: make the split unmistakable.
    for peer in peers[1:]:
        peer.args += ["--emulate-slowdown", "20"]
    with running(peers) as started:
        statuses = [p.status() or {} for p in started]
        assert [s["weights"] for s in statuses] == ["int4", "float32", "float32"]
        stages = statuses[1]["plan"]["stages"]
        # 256 MiB each: float32 (0.69 GiB with caches) needs all three peers; the int4 peer holds
        # the embedding and every layer (the head may still run faster on a float32 peer).
        held = {stage["device"]: stage["end"] - stage["start"] for stage in stages}
        assert len(stages) <= 2 and held.get("p1", 0) >= 31, stages
        answer = ask(started[0])
        assert answer.choices[0].message.content
        shard = statuses[0]["shard"]
        assert 0 < shard["weight_bytes"] < 130 * 2**20  # int4 layers, int8 table, refined head


def test_a_peer_offering_two_forms_holds_its_stage_in_the_one_that_fits(tmp_path: Path) -> None:
    """p1 offers float32 and int8 (slower here, a third of the bytes), p2 float32 only, 256 MiB
    each: float32 alone would need three such peers, so the plan gives p1 its stage in int8, and
    p1 loads it so."""
    peers = make_peers(tmp_path, 2, mdns=False)
    peers[0].args += ["--weights", "float32,int8"]
    with running(peers) as started:
        statuses = [p.status() or {} for p in started]
        assert "int8" in statuses[0]["weights_offered"], statuses[0]["weights_offered"]
        assert statuses[1]["weights_offered"] == ["float32"]
        stages = {stage["device"]: stage for stage in statuses[1]["plan"]["stages"]}
        assert stages["p1"]["form"] == "int8", stages
        assert statuses[0]["shard"]["weights"] == "int8"
        assert all(stage.get("form") == "float32" for name, stage in stages.items() if name != "p1")
        answer = ask(started[1])
        assert answer.choices[0].message.content
