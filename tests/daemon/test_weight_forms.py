"""Each device holds weights in its own form: its record says what its units take, the plan
counts those sizes, and peers with different forms still plan together."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from edgeshard.discovery.forms import FormFigures
from edgeshard.discovery.records import PeerId, PeerRecord
from edgeshard.peer.daemon.config import ConfigError, PeerConfig, load_config
from edgeshard.peer.daemon.identity import planning_settings
from edgeshard.peer.daemon.planview import cluster_from_view
from edgeshard.peer.model import profile as profiling
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.model.options import weights
from edgeshard.peer.model.profile import Profile, device_unit_bytes, kv_cache_bytes, offer, unit_sizes
from edgeshard.peer.model.shard import Shard, unit_count
from edgeshard.solver import plan

MIB = 2**20


def profile(form: str, weight_bytes: tuple[int, ...]) -> Profile:
    units = len(weight_bytes)
    return Profile((1.0,) * units, (1.0,) * units, "cpu", "float32", 2, 1.0, (1.0,) * 5, form, weight_bytes)


def test_a_compact_device_reports_its_weights_plus_each_layers_caches(default_source: GGUFModel) -> None:
    config = default_source.config
    total = unit_count(config)
    weighed = tuple(Shard(default_source, u, u + 1, weights="int4").weight_bytes() for u in (0, 1, total - 1))
    sizes = device_unit_bytes(profile("int4", (weighed[0], *[weighed[1]] * (total - 2), weighed[2])), config, 512, 2)
    cache = kv_cache_bytes(config, torch.float32, 512, 2)
    assert sizes[0] == weighed[0] and sizes[-1] == weighed[-1] and sizes[1] == weighed[1] + cache
    reference = unit_sizes(config, torch.float32, 512, 2)
    assert sum(sizes) < sum(u.bytes for u in reference) / 3  # int4 holds under a third of float32
    assert device_unit_bytes(profile("float32", weighed), config, 512, 2) == ()  # the model's own sizes


def record(name: str, memory: int, unit_bytes: tuple[int, ...]) -> PeerRecord:
    return PeerRecord(
        peer_id=PeerId(name),
        incarnation=1,
        heartbeat=0,
        address=f"http://{name}:7420",
        cluster="home",
        model="abc",
        memory_bytes=memory,
        unit_ms=(1.0,) * 32,
        settings=planning_settings(PeerConfig()),
        unit_bytes=unit_bytes,
    )


def test_devices_with_compact_weights_take_more_units_so_the_plan_needs_fewer(default_source: GGUFModel) -> None:
    config = default_source.config
    units = unit_sizes(config, torch.float32, 512, 2)
    compact = tuple(max(1, u.bytes // 5) for u in units)
    float_peers = [record(n, 256 * MIB, ()) for n in ("a", "b", "c")]
    assert len(plan(cluster_from_view(float_peers, "m", units), "latency").stages) == 3
    mixed = [record("a", 256 * MIB, compact), *float_peers[1:]]
    stages = plan(cluster_from_view(mixed, "m", units), "latency").stages
    assert [s.device for s in stages] == ["a"]  # the compact peer holds the whole model alone


def test_the_weight_form_is_not_a_planning_setting() -> None:
    assert planning_settings(PeerConfig(weights="int4")) == planning_settings(PeerConfig(weights="float32"))


def form(name: str, ms: float, scale: tuple[float, ...], weight: int) -> Profile:
    return Profile((ms,) * 4, (1.0,) * 4, "cpu", "float32", 2, 1.0, scale, name, (weight,) * 4)  # type: ignore[arg-type]


FLAT, BATCHES_WELL = (1.0, 2.0, 4.0, 8.0, 16.0), (1.0, 1.1, 1.3, 1.8, 3.0)


def test_a_peer_offers_its_fastest_form_first_and_slower_ones_only_if_smaller() -> None:
    """Forms are weighed at the batch the plan runs: a form faster for one session but flat
    under batching loses to one that batches well, and then stays on offer as the smaller."""
    int4, float32, int8 = form("int4", 1.0, FLAT, 1), form("float32", 2.5, BATCHES_WELL, 8), form("int8", 3.0, FLAT, 2)
    assert [p.form for p in offer([float32, int8, int4], 1)] == ["int4"]  # fastest and smallest
    assert [p.form for p in offer([int4, int8, float32], 8)] == ["float32", "int4"]  # int8: slower, larger than int4
    assert [p.form for p in offer([int8, float32], 1)] == ["float32", "int8"]
    assert offer([int8, float32], 1)[1].unit_ms == int8.unit_ms  # slower already: its own times


def test_where_forms_are_about_as_fast_the_most_accurate_comes_first_and_the_others_no_faster() -> None:
    """A GPU running a small model is bound by kernel launches, so every form measures about the
    same (seen on an H200: int8 came out 2% faster than bfloat16). Noise must not trade accuracy
    away: float32 comes first, and the smaller forms are offered for memory with their times
    raised to float32's, so a plan with room for float32 keeps it."""
    float32, bfloat16, int8 = (
        form("float32", 1.00, FLAT, 8),
        form("bfloat16", 0.99, FLAT, 4),
        form("int8", 0.98, FLAT, 2),
    )
    offered = offer([int8, bfloat16, float32], 1)
    assert [p.form for p in offered] == ["float32", "bfloat16", "int8"]
    assert all(p.unit_ms == float32.unit_ms for p in offered)
    clearly_faster = form("bfloat16", 0.5, FLAT, 4)
    assert [p.form for p in offer([int8, clearly_faster, float32], 1)] == ["bfloat16", "int8"]
    twins = offer([float32, form("bfloat16", 0.99, FLAT, 4), form("float16", 0.99, FLAT, 4)], 1)
    assert [p.form for p in twins] == ["float32", "float16"]  # the same size and speed: the more accurate


def test_offered_forms_reach_the_plan_which_picks_one_per_stage(default_source: GGUFModel) -> None:
    """A peer offering float32 and int8 with room for int8 only gets its stage in int8; with room
    for float32 it keeps the faster float32. The record carries the forms through the wire."""
    config = default_source.config
    units = unit_sizes(config, torch.float32, 512, 2)
    compact = tuple(max(1, u.bytes // 4) for u in units)
    offering = FormFigures("int8", (2.0,) * len(units), compact, (1.0,) * 5)

    def peer(memory: int) -> PeerRecord:
        return replace(record("a", memory, ()), form="float32", forms=(offering,))

    roomy = plan(cluster_from_view([peer(1024 * MIB)], "m", units), "latency").stages
    assert [(s.device, s.form) for s in roomy] == [("a", "float32")]
    tight = plan(cluster_from_view([peer(256 * MIB)], "m", units), "latency").stages
    assert [(s.device, s.form) for s in tight] == [("a", "int8")]


def test_a_peer_may_offer_several_forms_joined_by_commas() -> None:
    assert weights("auto") == "auto" and weights("int4, float32") == "int4,float32"
    for bad in ("fp8", "int4,int4", "auto,int4", ""):
        with pytest.raises(ValueError, match="joined by commas"):
            weights(bad)
    assert load_config({"weights": "int8,float32"}, {}).weights == "int8,float32"
    with pytest.raises(ConfigError, match="weights"):
        load_config({}, {"EDGESHARD_PEER_WEIGHTS": "int8,fp8"})


def test_an_emulated_slowdown_multiplies_times_measured_at_full_speed(
    default_source: GGUFModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The testbed's slower devices profile at full speed (a host emulating a device 20x slower,
    as time dilation asks, would otherwise profile 20x longer); the stretch is the shard's own
    arithmetic, so the times scale exactly and the batch curve, a ratio, stays."""
    built: list[float] = []
    real_shard = profiling.Shard

    def shard(*args: object, **kwargs: object) -> object:
        made = real_shard(*args, **kwargs)  # type: ignore[arg-type]
        built.append(made.slowdown)
        return made

    monkeypatch.setattr(profiling, "Shard", shard)
    monkeypatch.setattr(profiling, "_time_unit", lambda *_a: (2.0, 30.0))
    monkeypatch.setattr(profiling, "_batch_scale", lambda *_a: (1.0, 1.2))
    fast = profiling.measure(default_source, "cpu", "float32")
    slow = profiling.measure(default_source, "cpu", "float32", slowdown=20.0)
    assert set(built) == {1.0}  # every shard timed ran at full speed
    assert slow.unit_ms == tuple(20 * ms for ms in fast.unit_ms) and slow.unit_ms[1] == 40.0
    assert slow.prefill_ms == tuple(20 * ms for ms in fast.prefill_ms)
    assert slow.batch_scale == fast.batch_scale and slow.slowdown == 20.0
