"""Each device holds weights in its own form: its record says what its units take, the plan
counts those sizes, and peers with different forms still plan together."""

from __future__ import annotations

import torch
from edgeshard.discovery.records import PeerId, PeerRecord
from edgeshard.peer.daemon.config import PeerConfig
from edgeshard.peer.daemon.identity import planning_settings
from edgeshard.peer.daemon.planview import cluster_from_view
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.model.profile import Profile, device_unit_bytes, kv_cache_bytes, per_token_ms, unit_sizes
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


def test_auto_weighs_the_forms_at_the_batch_the_plan_runs() -> None:
    """A form faster for one session but flat under batching loses to one that batches well."""
    int4 = Profile((1.0,) * 4, (1.0,) * 4, "cpu", "float32", 2, 1.0, (1.0, 2.0, 4.0, 8.0, 16.0), "int4", ())
    float32 = Profile((2.5,) * 4, (1.0,) * 4, "cpu", "float32", 2, 1.0, (1.0, 1.1, 1.3, 1.8, 3.0), "float32", ())
    assert min([int4, float32], key=lambda p: per_token_ms(p, 1)).form == "int4"
    assert min([int4, float32], key=lambda p: per_token_ms(p, 8)).form == "float32"
