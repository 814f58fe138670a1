"""`edgeshard plan` and `edgeshard compare` as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.solver.test_cluster_file import GOOD, _with


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeshard.peer.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_plan_json_is_one_object_with_the_documented_keys() -> None:
    result = run("plan", "--cluster", "paper:llama2-7b", "--objective", "throughput", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert {
        "objective",
        "strategy",
        "source",
        "stages",
        "latency_ms",
        "bottleneck_ms",
        "throughput_tps",
        "plan_id",
    } <= set(plan)
    assert plan["objective"] == "throughput" and plan["strategy"] == "edgeshard"
    assert plan["stages"][0]["start"] == 0 and plan["stages"][-1]["end"] == 34
    assert plan["stages"][0]["device"] == plan["source"] == "agx-orin-00"
    assert abs(plan["throughput_tps"] - 1000 / plan["bottleneck_ms"]) < 1e-9


def test_plan_table_and_strategy() -> None:
    result = run("plan", "--cluster", "paper:llama2-7b-small", "--strategy", "edge-solo")
    assert result.returncode == 0
    assert "agx-orin-0" in result.stdout and "173.973 ms/token" in result.stdout


def test_compare_lists_every_strategy() -> None:
    result = run("compare", "--cluster", "paper:llama2-7b", "--json")
    assert result.returncode == 0
    rows = {row["strategy"]: row for row in json.loads(result.stdout)["strategies"]}
    assert set(rows) == {
        "edgeshard-latency",
        "edgeshard-throughput",
        "edge-solo",
        "cloud-edge-even",
        "cloud-edge-opt",
        "even",
        "memory-proportional",
        "greedy",
    }
    assert rows["edge-solo"]["latency_gain"] == 1.0
    assert all(rows["edgeshard-latency"]["latency_ms"] <= r["latency_ms"] for r in rows.values())
    table = run("compare", "--cluster", "paper:llama2-13b")
    assert table.returncode == 0 and "no plan" in table.stdout  # 13B fits no single device


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (_with(["devices", 1, "unit_ms"], [1, 2]), "devices[1].unit_ms"),
        (_with(["devices", 0, "unit_ms", 0], -1), "devices[0].unit_ms[0]"),
        (_with(["devices", 1, "id"], "a"), "devices[1].id"),
        (_with(["source"], "nowhere"), "source"),
        (_with(["surprise"], True), "surprise"),
    ],
)
def test_bad_files_exit_2_naming_the_field(tmp_path: Path, document: dict[str, object], field: str) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(document))
    result = run("plan", "--cluster", str(path))
    assert result.returncode == 2
    assert field in result.stderr
    assert "Traceback" not in result.stderr


def test_infeasible_says_how_much_memory_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(_with(["devices", 0, "memory_bytes"], 5)))
    result = run("plan", "--cluster", str(path))
    assert result.returncode == 1
    assert "missing" in result.stderr and "Traceback" not in result.stderr
    small = run("plan", "--cluster", "paper:llama2-70b-small")
    assert "162.96 GiB missing" in small.stderr


def test_good_file_plans(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(GOOD))
    assert run("plan", "--cluster", str(path), "--json").returncode == 0


def test_plan_names_the_form_a_stage_takes_and_its_memory_in_that_form(tmp_path: Path) -> None:
    gib = 2**30
    units = [{"name": n, "bytes": gib, "out_bytes": 10} for n in ("embed", "layer0", "head")]
    compact = {"name": "int4", "unit_ms": [2, 2, 2], "unit_bytes": [gib // 4] * 3}
    devices = [
        {"id": "a", "memory_bytes": gib, "unit_ms": [1, 1, 1], "form": "float32", "forms": [compact]},
        {"id": "b", "memory_bytes": gib, "unit_ms": [1, 1, 1]},
    ]
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"model": {"name": "m", "units": units}, "devices": devices, "network": NETWORK}))
    result = run("plan", "--cluster", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stages"] == [{"device": "a", "start": 0, "end": 3, "form": "int4"}]
    table = run("plan", "--cluster", str(path)).stdout
    assert "0.75  int4" in table, table  # 3 GiB of float32 units held in a quarter


NETWORK = {"default_mbps": 1000, "default_latency_ms": 1}
