"""Random clusters for tests and benchmarks (seeded, so every run sees the same instances)."""

from __future__ import annotations

import random
from dataclasses import replace

from .cluster import Cluster, Device, DeviceId, Link, Model, Network, Unit


def random_cluster(
    rng: random.Random,
    devices: int,
    units: int,
    kinds: int | None = None,
    tight_memory: bool = True,
    source: bool = True,
    pass_costs: bool = False,
) -> Cluster:
    """A Llama-like chain (embed, equal layers, head) over devices of `kinds` kinds (default: all distinct).

    Memory is drawn so that it often binds (a device holds a fraction of the model), and some
    links are slow, so the one-stage-per-device rule, memory and transfers all matter.
    With `pass_costs`, each kind also costs a fixed time per stage (drawn last: the other draws
    stay those of the same seed without it).
    """
    layer = rng.randint(50, 150) * 10**6
    hidden = rng.choice([4096, 16384, 65536])
    chain = [Unit("embed", layer // 2, hidden)]
    chain += [Unit(f"layer.{i}", layer, hidden) for i in range(units - 2)]
    chain.append(Unit("head", layer // 2, rng.choice([4, 128_000])))
    model = Model("random", tuple(chain[:units]))
    total = model.total_bytes
    kinds = devices if kinds is None else kinds
    profiles = []
    for _ in range(kinds):
        speed = rng.uniform(0.2, 5.0)
        share = rng.uniform(0.15, 0.7) if tight_memory else rng.uniform(0.5, 1.5)
        profiles.append(
            (
                int(total * share),
                tuple(round(speed * rng.uniform(0.8, 1.2), 3) for _ in range(units)),
            )
        )
    members = [Device(DeviceId(f"d{i:02d}"), *profiles[i % kinds]) for i in range(devices)]
    links = []
    for i in range(devices):
        for j in range(i + 1, devices):
            if kinds == devices and rng.random() < 0.3:
                links.append(Link(members[i].id, members[j].id, rng.choice([10.0, 100.0]), rng.uniform(0.5, 5)))
    if pass_costs:
        fixed = [round(rng.uniform(0.0, 3.0 * sum(ms) / len(ms)), 3) for _memory, ms in profiles]
        members = [replace(device, pass_ms=fixed[i % kinds]) for i, device in enumerate(members)]
    return Cluster(
        model=model,
        devices=tuple(members),
        network=Network(default_mbps=950.0, default_latency_ms=2.1, links=tuple(links)),
        source=members[0].id if source else None,
    )
