"""One real 3-peer cluster for the user-facing surfaces' tests (chat REPL, dashboard, metrics,
doctor, completions), started once for this package and stopped when its last test is done, so
its peers do not share the CPU with the rest of the suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..peers import Peer, make_peers, running


@pytest.fixture(scope="package")
def surface_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Peer]]:
    """Three peers on loopback that agree on a ready plan (bootstrap lists, no mDNS, so nothing
    else on the machine interferes); each user-facing surface's tests use them as a person would.
    Tests must leave them running and healthy (no kills, no stops)."""
    with running(make_peers(tmp_path_factory.mktemp("surface"), 3, mdns=False)) as peers:
        yield peers
