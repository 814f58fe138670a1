"""Devices that offer several weight forms: each stage takes the fastest form of its device that
holds its units, so a device short of memory trades speed for size (issue 12). The exact
planner is checked against brute force over every device order, cut and form."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from edgeshard.solver import ClusterFileError, Form, InfeasibleError, InvalidPlanError, assess, plan
from edgeshard.solver.cluster import Cluster, Device, DeviceId, Model, Network, Unit, parse_cluster
from edgeshard.solver.plan import Stage
from edgeshard.solver.random_clusters import random_cluster

from .optimal import assert_optimal

GIB = 2**30
UNITS = 8


def cluster(devices: list[Device]) -> Cluster:
    units = (Unit("embed", GIB, 10), *(Unit(f"layer{i}", GIB, 10) for i in range(UNITS - 2)), Unit("head", GIB, 1))
    return Cluster(Model("m", units), tuple(devices), Network(1000.0, 1.0, ()))


def offering(name: str, memory_gib: float, *, compact_ms: float = 2.0) -> Device:
    """float32 (1 ms, the model's sizes) as its own form; int4 (slower here, a quarter the bytes)."""
    compact = Form("int4", (compact_ms,) * UNITS, (GIB // 4,) * UNITS)
    return Device(DeviceId(name), int(memory_gib * GIB), (1.0,) * UNITS, form="float32", forms=(compact,))


def test_a_device_with_room_keeps_its_fast_form() -> None:
    found = plan(cluster([offering("a", 9)]), "latency")
    assert [(s.device, s.form) for s in found.stages] == [("a", "float32")]
    assert found.latency_ms == pytest.approx(UNITS * 1.0)


def test_a_device_short_of_memory_takes_its_compact_form() -> None:
    found = plan(cluster([offering("a", 3)]), "latency")  # float32 needs 8 GiB, int4 2 GiB
    assert [(s.device, s.start, s.end, s.form) for s in found.stages] == [("a", 0, UNITS, "int4")]
    assert found.latency_ms == pytest.approx(UNITS * 2.0)
    assert found.to_json()["stages"][0]["form"] == "int4"


def test_speed_is_traded_for_memory_only_where_it_pays() -> None:
    # a holds 4 units in float32; b only 2 in float32 but all in int4. With a slow compact form
    # b holds the rest in int4 only when that beats the alternative (here: the only plan).
    found = plan(cluster([offering("a", 4), offering("b", 2.5)]), "latency")
    forms = {s.device: s.form for s in found.stages}
    assert sorted(forms) == ["a", "b"]
    assert "int4" in forms.values()  # 8 GiB of float32 units cannot fit in 6.5 GiB
    # When the compact form is also the faster one (int4 on a CPU), every stage takes it.
    quick = plan(cluster([offering("a", 9, compact_ms=0.5)]), "latency")
    assert [s.form for s in quick.stages] == ["int4"]


def test_no_form_fits_says_so() -> None:
    with pytest.raises(InfeasibleError):
        plan(cluster([offering("a", 1)]), "latency")  # int4 needs 2 GiB


def test_a_stage_in_a_form_the_device_lacks_or_cannot_hold_is_invalid() -> None:
    mixed = cluster([offering("a", 3)])
    with pytest.raises(InvalidPlanError, match="offers no form"):
        assess(mixed, "latency", [Stage(DeviceId("a"), 0, UNITS, "int8")])
    with pytest.raises(InvalidPlanError, match="memory"):
        assess(mixed, "latency", [Stage(DeviceId("a"), 0, UNITS, "float32")])
    assert assess(mixed, "latency", [Stage(DeviceId("a"), 0, UNITS, "int4")]).latency_ms == pytest.approx(16.0)


def test_forms_travel_in_the_cluster_document_and_plan_ids_follow_them() -> None:
    mixed = cluster([offering("a", 3), Device(DeviceId("b"), 9 * GIB, (1.0,) * UNITS)])
    document = json.loads(json.dumps(mixed.to_document()))
    assert document["devices"][0]["form"] == "float32"
    assert document["devices"][0]["forms"][0]["name"] == "int4"
    assert "form" not in document["devices"][1] and "forms" not in document["devices"][1]
    assert parse_cluster(document) == mixed
    alone = cluster([offering("a", 3)])  # holds the model only in int4
    compact = alone.devices[0].forms[0]
    renamed = replace(alone, devices=(replace(alone.devices[0], forms=(replace(compact, name="q4"),)),))
    assert [s.form for s in plan(renamed, "latency").stages] == ["q4"]
    assert plan(renamed, "latency").plan_id != plan(alone, "latency").plan_id


@pytest.mark.parametrize(
    ("forms", "field"),
    [
        ([{"name": "float32", "unit_ms": [1.0] * UNITS}], "devices[0].forms[0].name"),  # the device's own name
        ([{"name": "", "unit_ms": [1.0] * UNITS}], "devices[0].forms[0].name"),
        ([{"name": "int4", "unit_ms": [1.0] * 3}], "devices[0].forms[0].unit_ms"),
        ([{"name": "int4", "unit_ms": [1.0] * UNITS, "unit_bytes": [1] * 2}], "devices[0].forms[0].unit_bytes"),
        ([{"name": "int4", "unit_ms": [1.0] * UNITS, "speed": 2}], "devices[0].forms[0].speed"),
    ],
)
def test_bad_forms_name_the_field(forms: list[dict[str, object]], field: str) -> None:
    document = cluster([offering("a", 3)]).to_document()
    document["devices"][0]["forms"] = forms
    with pytest.raises(ClusterFileError) as raised:
        parse_cluster(document)
    assert str(raised.value).startswith(field)


def with_forms(rng: random.Random, base: Cluster) -> Cluster:
    """Some devices also offer a compact form (a quarter or half the bytes, slower or faster)."""
    devices = []
    for device in base.devices:
        if rng.random() < 0.6:
            ratio = rng.choice([0.25, 0.5])
            slower = rng.choice([0.7, 1.3, 2.0, 3.0])
            compact = Form(
                "compact",
                tuple(round(ms * slower, 3) for ms in device.unit_ms),
                tuple(max(1, int(u.bytes * ratio)) for u in base.model.units),
            )
            device = replace(device, form="full", forms=(compact,))
        devices.append(device)
    return replace(base, devices=tuple(devices))


@pytest.mark.parametrize("seed", range(40))
def test_plans_with_forms_equal_brute_force(seed: int) -> None:
    rng = random.Random(1000 + seed)
    assert_optimal(with_forms(rng, random_cluster(rng, rng.randint(2, 4), rng.randint(4, 6))))


def test_random_clusters_exercise_the_compact_forms() -> None:
    """The brute-force comparison above is not vacuous: in many of its clusters the optimum puts
    a stage in the compact form, and in many it beats the best plan without forms."""
    compact, better = 0, 0
    for seed in range(40):
        rng = random.Random(1000 + seed)
        base = random_cluster(rng, rng.randint(2, 4), rng.randint(4, 6))
        mixed = with_forms(rng, base)
        try:
            found = plan(mixed, "latency")
        except InfeasibleError:
            continue
        compact += any(s.form == "compact" for s in found.stages)
        try:
            better += found.cost.latency_ns < plan(base, "latency").cost.latency_ns
        except InfeasibleError:
            better += 1
    assert compact >= 10 and better >= 10, (compact, better)
