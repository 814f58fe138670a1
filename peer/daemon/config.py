"""The peer daemon's settings: defaults, then a TOML file, then EDGESHARD_* variables, then flags.

Pure parsing, no I/O beyond reading the file it is given. Every fault names the setting and
where it came from, so `edgeshard-peer` can exit 2 with one clear line.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from edgeshard.solver import EXACT, OBJECTIVES, STRATEGIES, Objective

from ..model.options import COMPILE_CHOICES, KV_FORMS, KVForm, weights

DEFAULT_CONFIG = Path("/etc/edgeshard/peer.toml")
ENV_PREFIX = "EDGESHARD_PEER_"
PEER_PORT = 7420
API_PORT = 7421
# Settings that were renamed: a file or variable with the old name gets a pointer to the new one.
RENAMED = {"dead_after": "dead_after_s", "gossip_interval": "gossip_interval_s"}


class ConfigError(ValueError):
    """A setting is unknown or malformed; the message names it and its origin."""


@dataclass(frozen=True)
class PeerConfig:
    """Everything `edgeshard-peer` can be told."""

    name: str = ""  # a label for people (logs, status); empty: the host name. The id is the key's.
    listen: str = f"0.0.0.0:{PEER_PORT}"  # peer traffic: stages, gossip, probes
    api_listen: str = f"127.0.0.1:{API_PORT}"  # the user's OpenAI-compatible API
    advertise: str = ""  # the address others reach us at; empty: --interface, else a guess
    model: str = "default"
    bootstrap: tuple[str, ...] = ()  # HOST:PORT of peers to contact without mDNS
    mdns: bool = True
    interface: tuple[str, ...] = ()  # IPv4 addresses mDNS uses (empty: all)
    objective: Objective = "latency"
    strategy: str = EXACT  # benchmarks only: plan with a baseline (every peer must say the same)
    source: bool = False  # host stage 0 here (this device is where prompts come from)
    cluster: str = "default"
    device: str = "auto"
    weights: str = "auto"  # the weight forms this device offers (model/options.py `weights`)
    compile: str = "auto"  # torch.compile each stage's step: auto, on, off (model/compiled.py)
    max_memory: int | None = None
    cache_dir: str = ""
    context: int = 2048  # KV cache positions per session, counted in the plan's memory
    sessions: int = 8  # concurrent sessions per stage, counted in the plan's memory
    kv_cache: KVForm = "float"  # how stages hold KV: float (the compute dtype) or int8 (q8_0-like groups)
    prefix_cache: int = 4096  # finished sessions' KV kept for reuse, in tokens per stage (0: off), counted too
    queue: int = 32  # requests that wait for a session at this peer's API; more get 429
    gossip_interval_s: float = 1.0
    dead_after_s: float = 10.0  # seconds of silence before a peer is declared dead
    emulate_slowdown: float = 1.0  # testbed only: stretch compute by this factor
    emulate_delay_ms: float = 0.0  # testbed only: hold every stage frame and probe this long on its way out
    reprofile: bool = False  # measure the device again instead of using the cached profile
    log_level: str = "info"
    secret_file: str = ""  # the cluster secret (`edgeshard init`); empty: an open cluster, loudly
    state_dir: str = ""  # this peer's key, id and incarnation; empty: see `default_state_dir`
    api_key: str = ""  # bearer token the user API requires; needed when the API is not on loopback
    tls: bool = False  # encrypt peer traffic (https/wss), each peer's certificate pinned by its record

    @property
    def label(self) -> str:
        """The name people see: --name, or this host's name."""
        return self.name or socket.gethostname()


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_bytes(text: str) -> int:
    """'512MiB', '2G', '1.5GB', '1048576' → bytes (binary with an i, decimal without)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (e.g. 512MiB, 2GB, 1073741824)")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    scale = 1024 ** "kmgt".index(unit[0]) * 1024 if "i" in unit else _UNITS[unit.rstrip("b") or unit]
    return int(number * scale)


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """'HOST:PORT', 'HOST' or ':PORT' → (host, port)."""
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"not HOST:PORT: {text!r}") from None
    if not 0 <= number < 65536:
        raise ValueError(f"port out of range: {text!r}")
    return host or "0.0.0.0", number


def _list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ValueError("a list of strings, or one comma-separated string")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        return value.lower() in {"1", "true", "yes", "on"}
    raise ValueError("true or false")


def _coerce(key: str, value: Any) -> Any:
    """One setting from TOML or text into its type (ValueError when it does not fit)."""
    if key in {"bootstrap", "interface"}:
        return _list(value)
    if key in {"mdns", "source", "reprofile", "tls"}:
        return _bool(value)
    if key == "max_memory":
        if value is None or value == "":
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) else parse_bytes(str(value))
    if key in {"context", "sessions", "queue", "prefix_cache"}:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError("an integer")
        return int(value)
    if key in {"gossip_interval_s", "dead_after_s", "emulate_slowdown", "emulate_delay_ms"}:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError("a number")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _check(config: PeerConfig) -> None:
    if config.objective not in OBJECTIVES:
        raise ConfigError(f"objective: {config.objective!r} is not {' or '.join(OBJECTIVES)}")
    if config.strategy not in STRATEGIES:
        raise ConfigError(f"strategy: {config.strategy!r} is not one of {', '.join(STRATEGIES)}")
    try:
        weights(config.weights)
    except ValueError as error:
        raise ConfigError(f"weights: {error}") from None
    if config.compile not in COMPILE_CHOICES:
        raise ConfigError(f"compile: {config.compile!r} is not one of {', '.join(COMPILE_CHOICES)}")
    if config.context < 1 or config.sessions < 1:
        raise ConfigError("context and sessions: must be at least 1")
    if config.kv_cache not in KV_FORMS:
        raise ConfigError(f"kv_cache: {config.kv_cache!r} is not one of {', '.join(KV_FORMS)}")
    if config.queue < 0 or config.prefix_cache < 0:
        raise ConfigError("queue and prefix_cache: must be at least 0")
    if config.emulate_slowdown < 1:
        raise ConfigError("emulate_slowdown: a factor of at least 1")
    if not 0 <= config.emulate_delay_ms <= 10_000:
        raise ConfigError("emulate_delay_ms: 0 to 10000 ms")
    # A gossip round can take an interval plus a request timeout (3 s) when a target hangs.
    if config.gossip_interval_s <= 0 or config.dead_after_s < 2 * config.gossip_interval_s + 3:
        raise ConfigError("dead_after_s: at least two gossip intervals plus 3 s")
    for key in ("listen", "api_listen"):
        try:
            split_host_port(getattr(config, key), 0)
        except ValueError as error:
            raise ConfigError(f"{key}: {error}") from None
    if not re.fullmatch(NAME_PATTERN, config.label):
        raise ConfigError(f"name: {config.label!r} (letters, digits, '.', '_', '-'; at most 63)")
    api_host = split_host_port(config.api_listen, API_PORT)[0]
    if not config.api_key and not is_loopback(api_host):
        raise ConfigError(
            f"api_listen: {config.api_listen} can be reached from the network: set api_key (--api-key) too, "
            "which clients send as their OpenAI api key"
        )


NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"


def is_loopback(host: str) -> bool:
    """Whether `host` (a listen address) is only reachable from this machine."""
    return host in {"localhost", "::1"} or host.startswith("127.")


def default_state_dir() -> Path:
    """$EDGESHARD_STATE, else systemd's $STATE_DIRECTORY, else $XDG_STATE_HOME/edgeshard, else
    ~/.local/state/edgeshard. One peer per state directory (it holds the peer's key)."""
    for variable in ("EDGESHARD_STATE", "STATE_DIRECTORY"):
        if os.environ.get(variable):
            return Path(os.environ[variable].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edgeshard"


def _apply(config: PeerConfig, values: Mapping[str, Any], origin: str) -> PeerConfig:
    known = {f.name for f in fields(PeerConfig)}
    changes = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key not in known:
            hint = f" (renamed {RENAMED[key]!r})" if key in RENAMED else ""
            raise ConfigError(f"{origin}: unknown setting {raw_key!r}{hint}")
        try:
            changes[key] = _coerce(key, value)
        except ValueError as error:
            raise ConfigError(f"{origin}: {raw_key}: {error}") from None
    return replace(config, **changes)


def load_config(flags: Mapping[str, Any], environment: Mapping[str, str], config_file: str | None = None) -> PeerConfig:
    """Defaults ← TOML file ← EDGESHARD_PEER_* variables ← flags given (None = not given).

    `config_file` None uses /etc/edgeshard/peer.toml when it exists; a named file must exist.
    """
    config = PeerConfig()
    path = Path(config_file) if config_file else DEFAULT_CONFIG
    if config_file or path.exists():
        try:
            document = tomllib.loads(path.read_text())
        except OSError as error:
            raise ConfigError(f"{path}: {error.strerror or error}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: {error}") from None
        config = _apply(config, document.get("peer", document), str(path))
    variables = {
        key.removeprefix(ENV_PREFIX).lower(): value
        for key, value in environment.items()
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG"
    }
    config = _apply(config, variables, "environment")
    config = _apply(config, {k: v for k, v in flags.items() if v is not None}, "command line")
    _check(config)
    return config
