"""Reading cluster files: JSON or TOML from a path, or a bundled testbed by `paper:NAME`."""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from .cluster import Cluster, parse_cluster
from .errors import ClusterFileError

BUNDLED_PREFIX = "paper:"


def bundled_names() -> list[str]:
    """Names usable as `paper:NAME`."""
    folder = resources.files("edgeshard.solver.data")
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def read_document(spec: str) -> Any:
    """The decoded document behind a path or `paper:NAME`."""
    if spec.startswith(BUNDLED_PREFIX):
        name = spec.removeprefix(BUNDLED_PREFIX)
        if name not in bundled_names():
            raise ClusterFileError("", f"no bundled cluster {name!r} (have: {', '.join(bundled_names())})")
        text = resources.files("edgeshard.solver.data").joinpath(f"{name}.json").read_text()
        return json.loads(text)
    path = Path(spec)
    try:
        text = path.read_text()
    except OSError as error:
        raise ClusterFileError("", f"cannot read {spec}: {error.strerror}") from None
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ClusterFileError(
            "", f"{spec} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {error}"
        ) from None


def load_cluster(spec: str) -> Cluster:
    """Read and validate a cluster file."""
    return parse_cluster(read_document(spec))
