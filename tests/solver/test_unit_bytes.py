"""Devices whose weights take a form of their own: the planner counts each device's own unit
sizes, so a device holding compact weights takes more units and the plan needs fewer devices."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from edgeshard.solver import InfeasibleError, plan
from edgeshard.solver.cluster import Cluster, Device, DeviceId, Model, Network, Unit, parse_cluster
from edgeshard.solver.random_clusters import random_cluster

from .optimal import assert_optimal

GIB = 2**30


def cluster(devices: list[Device]) -> Cluster:
    units = (Unit("embed", GIB, 10), *(Unit(f"layer{i}", GIB, 10) for i in range(6)), Unit("head", GIB, 1))
    return Cluster(Model("m", units), tuple(devices), Network(1000.0, 1.0, ()))


def device(name: str, memory_gib: int, unit_bytes: tuple[int, ...] = ()) -> Device:
    return Device(DeviceId(name), memory_gib * GIB, (1.0,) * 8, unit_bytes)


def test_compact_weights_let_fewer_devices_hold_the_model() -> None:
    float32 = [device("a", 4), device("b", 4)]
    assert len(plan(cluster(float32), "latency").stages) == 2
    with pytest.raises(InfeasibleError):
        plan(cluster([device("a", 4)]), "latency")
    quarter = (GIB // 4,) * 8  # the same units in a quarter of the bytes
    alone = plan(cluster([device("a", 4, quarter), device("b", 4)]), "latency")
    assert [s.device for s in alone.stages] == ["a"]  # one device, no hop
    with pytest.raises(InfeasibleError, match="needs"):
        plan(cluster([device("a", 1, quarter)]), "latency")


def test_unit_bytes_travel_in_the_cluster_document_and_only_when_given() -> None:
    mixed = cluster([device("a", 4, (GIB // 4,) * 8), device("b", 4)])
    document = json.loads(json.dumps(mixed.to_document()))
    assert document["devices"][0]["unit_bytes"] == [GIB // 4] * 8
    assert "unit_bytes" not in document["devices"][1]
    assert parse_cluster(document) == mixed


@pytest.mark.parametrize("seed", range(40))
def test_plans_with_per_device_sizes_equal_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    base = random_cluster(rng, rng.randint(2, 4), rng.randint(4, 7))
    units = base.model.units
    devices = tuple(
        replace(d, unit_bytes=tuple(max(1, int(u.bytes * rng.choice([0.25, 0.5, 1.0]))) for u in units))
        if rng.random() < 0.6
        else d
        for d in base.devices
    )
    assert_optimal(replace(base, devices=devices))
