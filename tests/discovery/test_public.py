"""discovery's public names load on first use; the pure modules do not pull in the network code."""

from __future__ import annotations

import subprocess
import sys

import edgeshard.discovery as discovery
import pytest


def test_every_public_name_resolves_to_its_module() -> None:
    assert sorted(discovery.__all__) == sorted(discovery._MODULE_OF)  # the two lists agree
    for name in discovery.__all__:
        value = getattr(discovery, name)
        assert value is getattr(sys.modules[f"edgeshard.discovery.{discovery._MODULE_OF[name]}"], name)
    with pytest.raises(AttributeError):
        _ = discovery.NoSuchName  # type: ignore[attr-defined]


def test_the_pure_modules_import_without_aiohttp_or_zeroconf() -> None:
    probe = (
        "import sys, edgeshard.discovery.records, edgeshard.discovery.membership;"
        "print(sorted(m for m in ('aiohttp', 'zeroconf') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.strip() == "[]"
