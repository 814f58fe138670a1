"""Cluster files: the documented format, and clear errors for bad ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from edgeshard.solver import ClusterFileError, parse_cluster
from edgeshard.solver.clusterfile import bundled_names, load_cluster, read_document
from edgeshard.solver.paper import LLAMA2_7B, all_paper_clusters

GOOD: dict[str, Any] = {
    "model": {
        "name": "tiny",
        "units": [
            {"name": "embed", "bytes": 10, "out_bytes": 8},
            {"name": "layer.0", "bytes": 20, "out_bytes": 8},
            {"name": "head", "bytes": 10, "out_bytes": 4},
        ],
    },
    "devices": [
        {"id": "a", "memory_bytes": 40, "unit_ms": [0.1, 1, 0.5]},
        {"id": "b", "memory_bytes": 20, "unit_ms": [0.1, 1, 0.5]},
    ],
    "source": "a",
    "network": {
        "default_mbps": 950,
        "default_latency_ms": 2.1,
        "links": [{"a": "a", "b": "b", "mbps": 10, "latency_ms": 1}],
    },
}


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    document = copy.deepcopy(GOOD)
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


@pytest.mark.parametrize(
    ("document", "field", "problem"),
    [
        (_with(["extra"], 1), "extra", "unknown field"),
        (_with(["devices", 0, "speed"], 1), "devices[0].speed", "unknown field"),
        (_with(["devices", 1, "unit_ms"], [1, 2]), "devices[1].unit_ms", "has 2 entries, the model has 3"),
        (_with(["devices", 0, "unit_ms", 1], -1), "devices[0].unit_ms[1]", ">= 0"),
        (_with(["devices", 0, "memory_bytes"], -5), "devices[0].memory_bytes", ">= 0"),
        (_with(["model", "units", 2, "out_bytes"], "4"), "model.units[2].out_bytes", "number"),
        (_with(["devices", 1, "id"], "a"), "devices[1].id", "duplicate"),
        (_with(["source"], "c"), "source", "not a device"),
        (_with(["network", "links", 0, "b"], "z"), "network.links[0].b", "not a device"),
        (_with(["network", "default_mbps"], 0), "network.default_mbps", "> 0"),
        (_with(["model", "units"], []), "model.units", "not be empty"),
        (_with(["devices"], KeyError), "devices", "missing"),
        (_with(["version"], 2), "version", "unsupported"),
    ],
)
def test_bad_documents_name_the_field(document: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(ClusterFileError) as error:
        parse_cluster(document)
    assert error.value.field == field
    assert problem in str(error.value)


def test_good_document_round_trips() -> None:
    cluster = parse_cluster(GOOD)
    assert parse_cluster(cluster.to_document()) == cluster
    assert cluster.network.link(cluster.devices[1].id, cluster.devices[0].id) == (10.0, 1.0)


def test_toml_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'source = "a"\n[model]\nname = "t"\n[[model.units]]\nname = "u"\nbytes = 1\nout_bytes = 1\n'
        '[[devices]]\nid = "a"\nmemory_bytes = 1\nunit_ms = [1.0]\n'
        "[network]\ndefault_mbps = 100\ndefault_latency_ms = 1\n"
    )
    assert load_cluster(str(path)).source == "a"


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ClusterFileError, match="cannot read"):
        load_cluster(str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ClusterFileError, match="not valid JSON"):
        load_cluster(str(broken))
    with pytest.raises(ClusterFileError, match="no bundled cluster"):
        load_cluster("paper:gpt-5")


def test_bundled_files_are_what_the_generator_makes() -> None:
    generated = all_paper_clusters()
    assert bundled_names() == sorted(generated)
    for name, document in generated.items():
        assert read_document(f"paper:{name}") == json.loads(json.dumps(document))
        parse_cluster(document)


def test_paper_unit_sizes_match_the_published_profile() -> None:
    gib = 2**30
    assert round(LLAMA2_7B.embed_bytes / gib, 3) == 0.488
    assert round(LLAMA2_7B.layer_bytes / gib, 3) == 0.754
    assert round(LLAMA2_7B.head_bytes / gib, 3) == 0.488
    cluster = load_cluster("paper:llama2-7b")
    assert round(cluster.model.total_bytes / gib, 1) == 25.1
    assert len(cluster.devices) == 15 and cluster.source == "agx-orin-00"
