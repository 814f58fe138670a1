"""Every torch op of a process's stages runs on one thread (model/compute.py): libgomp gives each
thread that runs a parallel op its own team, and two teams on a small machine halved decode speed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from edgeshard.peer.model.compute import THREAD_NAME
from edgeshard.peer.model.files import open_model
from edgeshard.peer.model.shard import Shard, even_split, unit_count
from edgeshard.peer.pipeline.local import LocalCluster
from edgeshard.peer.wire import SamplingParams


async def test_a_local_cluster_loads_and_computes_only_on_the_compute_thread(
    random_hf_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where: list[tuple[str, str]] = []
    real_init, real_compute = Shard.__init__, Shard._compute

    def init(self: Shard, *args: Any, **kwargs: Any) -> None:
        where.append(("load", threading.current_thread().name))
        real_init(self, *args, **kwargs)

    def compute(self: Shard, *args: Any, **kwargs: Any) -> Any:
        where.append(("pass", threading.current_thread().name))
        return real_compute(self, *args, **kwargs)

    monkeypatch.setattr(Shard, "__init__", init)
    monkeypatch.setattr(Shard, "_compute", compute)
    source = open_model(str(random_hf_model))
    ranges = even_split(unit_count(source.config), 2)
    async with LocalCluster(str(random_hf_model), ranges, source=source) as cluster:
        tokens = [t async for t in cluster.origin.generate(cluster.route, [5, 6, 7], SamplingParams(), 4)]
    assert len(tokens) == 4
    assert {kind for kind, _ in where} == {"load", "pass"}
    assert len(where) >= 2 + 2 * 4  # two loads, two stages' passes for every token
    assert all(name.startswith(THREAD_NAME + "_") for _, name in where), where
