"""Pure pieces of the daemon: settings, request parsing, link figures, layout ids, unit sizes,
the state directory and the cluster secret."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from edgeshard.discovery.auth import read_secret, write_secret
from edgeshard.discovery.probe import settle
from edgeshard.discovery.records import PeerId, PeerRecord
from edgeshard.peer.api.client import describe_status
from edgeshard.peer.api.errors import RequestError
from edgeshard.peer.api.schemas import parse_chat_request
from edgeshard.peer.daemon.config import ConfigError, PeerConfig, load_config, parse_bytes
from edgeshard.peer.daemon.identity import planning_settings
from edgeshard.peer.daemon.lifecycle import layout_id
from edgeshard.peer.daemon.planview import plannable, source_of
from edgeshard.peer.daemon.security import Security
from edgeshard.peer.daemon.state import PeerState
from edgeshard.peer.errors import PeerError
from edgeshard.peer.model.files import GGUFModel
from edgeshard.peer.model.profile import unit_sizes
from edgeshard.peer.model.shard import Shard
from edgeshard.peer.wire import WIRE_VERSION
from edgeshard.solver import Cost, DeviceId, Plan, PlanId, Stage


def test_settings_layer_file_then_environment_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "peer.toml"
    file.write_text('[peer]\nname = "orin-1"\ncluster = "lab"\nmax_memory = "2GiB"\nbootstrap = ["a:7420"]\n')
    config = load_config({}, {}, str(file))
    assert (config.name, config.cluster, config.max_memory, config.bootstrap) == (
        "orin-1",
        "lab",
        2 * 2**30,
        ("a:7420",),
    )
    environment = {"EDGESHARD_PEER_CLUSTER": "home", "EDGESHARD_PEER_MDNS": "false"}
    config = load_config({"cluster": None, "max_memory": "512MiB"}, environment, str(file))
    assert (config.cluster, config.mdns, config.max_memory) == ("home", False, 512 * 2**20)
    assert load_config({"cluster": "flag"}, environment, str(file)).cluster == "flag"


@pytest.mark.parametrize(
    ("text", "settings", "message"),
    [
        ("colour = 1\n", {}, "unknown setting 'colour'"),
        ("context = 'lots'\n", {}, "context"),
        ("", {"objective": "speed"}, "objective"),
        ("", {"listen": "host:99999"}, "listen"),
        ("", {"name": "bad name!"}, "name"),
        ("", {"max_memory": "lots"}, "max_memory"),
        ("", {"compile": "sometimes"}, "compile"),
        ("", {"kv_cache": "int4"}, "kv_cache"),
        ("", {"prefix_cache": "-1"}, "prefix_cache"),
        ("", {"dead_after_s": "4"}, "dead_after_s"),
        ("dead_after = 12\n", {}, "renamed 'dead_after_s'"),
        ("[peer\n", {}, "peer.toml"),
    ],
)
def test_bad_settings_name_the_setting(tmp_path: Path, text: str, settings: dict[str, str], message: str) -> None:
    file = tmp_path / "peer.toml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(settings, {}, str(file))


def test_the_command_exits_2_with_one_line_on_bad_settings(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "edgeshard.peer.daemon", "--config", str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and run.stderr.startswith("edgeshard-peer: ") and "Traceback" not in run.stderr


def test_the_shipped_example_settings_parse_to_the_defaults() -> None:
    example = Path(__file__).resolve().parents[2] / "systemd" / "peer.toml"
    assert load_config({}, {}, str(example)) == PeerConfig()


def test_peers_of_another_wire_version_plan_apart() -> None:
    settings = planning_settings(PeerConfig())
    assert settings.startswith(f"wire{WIRE_VERSION}/") and "context=2048" in settings
    own, old = _record("a", settings=settings), _record("b", settings=settings.split("/", 1)[1])
    fit, excluded = plannable([own, old], own)
    assert [r.peer_id for r in fit] == ["a"] and "other settings" in excluded["b"]


def test_sizes_parse_binary_and_decimal() -> None:
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("2G") == 2 * 10**9
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("4096") == 4096
    with pytest.raises(ValueError):
        parse_bytes("many")


def test_chat_requests_are_validated_like_openai() -> None:
    chat = parse_chat_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_tokens": 5,
            "temperature": 0,
            "seed": 7,
            "stop": "\n",
            "stream": True,
        },
        "default",
    )
    assert chat.messages == [{"role": "user", "content": "hi"}]
    assert (chat.max_tokens, chat.sampling.temperature, chat.sampling.seed, chat.stops, chat.stream) == (
        5,
        0.0,
        7,
        ["\n"],
        True,
    )
    # Without a seed one is drawn at arrival, so a fail-over replays the same sample.
    assert parse_chat_request({"messages": [{"role": "user", "content": "x"}]}, "d").sampling.temperature == 1.0
    for bad in (
        {},
        {"messages": []},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        {"messages": [{"role": "user", "content": "x"}], "temperature": 3},
        {"messages": [{"role": "user", "content": "x"}], "n": 2},
        {"messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5},
    ):
        with pytest.raises(RequestError):
            parse_chat_request(bad, "d")


def test_link_figures_move_only_past_a_factor_of_two() -> None:
    assert settle(None, 900.0) == 1024.0
    assert settle(1024.0, 600.0) == 1024.0  # jitter: unchanged, no re-plan
    assert settle(1024.0, 2100.0) == 2048.0
    assert settle(1024.0, 100.0) == 128.0


def _plan(stages: list[Stage], latency_ms: float) -> Plan:
    cost = Cost(int(latency_ms * 1e6), int(latency_ms * 1e6))
    return Plan("latency", "edgeshard", None, tuple(stages), cost, PlanId(f"p{latency_ms}"))


def test_layout_ids_ignore_costs_but_not_placement() -> None:
    a, b = DeviceId("a"), DeviceId("b")
    stages = [Stage(a, 0, 10), Stage(b, 10, 32)]
    addresses = {"a": "http://198.18.0.1:7420", "b": "http://198.18.0.2:7420"}
    same = layout_id("m", _plan(stages, 50.0), addresses)
    assert same == layout_id("m", _plan(stages, 61.0), addresses)
    assert same != layout_id("m", _plan([Stage(a, 0, 11), Stage(b, 11, 32)], 50.0), addresses)
    assert same != layout_id("m", _plan(stages, 50.0), {**addresses, "b": "http://198.18.0.3:7420"})
    assert same != layout_id("other-model", _plan(stages, 50.0), addresses)


def _record(peer: str, model: str = "m", units: int = 4, source: bool = False, settings: str = "s") -> PeerRecord:
    return PeerRecord(
        PeerId(peer), 1, 0, f"http://{peer}", "c", model, 2**30, (1.0,) * units, source=source, settings=settings
    )


def test_other_models_and_unprofiled_peers_stay_out_of_the_plan() -> None:
    own = _record("a")
    others = [_record("b", model="n"), _record("c", units=0), _record("d"), _record("e", settings="float16/...")]
    fit, excluded = plannable([own, *others], own)
    assert [r.peer_id for r in fit] == ["a", "d"]
    assert "another model" in excluded["b"] and "no profile" in excluded["c"] and "other settings" in excluded["e"]
    assert source_of([_record("z", source=True), _record("y", source=True), own]) == "y"
    assert source_of([own]) is None


def test_unit_sizes_match_what_a_shard_holds(default_source: GGUFModel) -> None:
    config = default_source.config
    units = unit_sizes(config, torch.float32, context=512, sessions=2)
    assert len(units) == config.num_hidden_layers + 2
    middle = Shard(default_source, 5, 9)
    kv = 2 * config.num_key_value_heads * (config.hidden_size // config.num_attention_heads) * 512 * 2 * 4
    # The shard also holds the rotary tables (a few hundred bytes).
    assert 0 <= middle.weight_bytes() + 4 * kv - sum(u.bytes for u in units[5:9]) <= 1024


def test_an_api_open_to_the_network_needs_a_key() -> None:
    with pytest.raises(ConfigError, match="api_key"):
        load_config({"api_listen": "0.0.0.0:7421"}, {}, None)
    config = load_config({"api_listen": "0.0.0.0:7421"}, {"EDGESHARD_PEER_API_KEY": "k"}, None)
    assert config.api_key == "k"
    assert load_config({"api_listen": "127.0.0.1:7421"}, {}, None).api_key == ""


def test_the_state_directory_keeps_the_id_and_raises_the_incarnation(tmp_path: Path) -> None:
    state = PeerState.open(tmp_path / "state")
    peer_id, first = state.signer.peer_id, state.next_incarnation()
    with pytest.raises(PeerError, match="in use by another peer"):
        PeerState.open(tmp_path / "state")
    state.keep_incarnation(first + 5)  # a refutation raised it
    state.close()
    again = PeerState.open(tmp_path / "state")
    assert again.signer.peer_id == peer_id  # the id is the key's, kept
    assert again.next_incarnation() == first + 6  # only goes up, whatever the clock says
    assert stat.S_IMODE((tmp_path / "state" / "peer.key").stat().st_mode) == 0o600
    again.close()
    other = PeerState.open(tmp_path / "other")
    assert other.signer.peer_id != peer_id
    other.close()


def test_a_bad_or_missing_secret_stops_the_peer_with_one_line(tmp_path: Path) -> None:
    loose = tmp_path / "loose.secret"
    write_secret(loose)
    loose.chmod(0o644)
    for path, message in ((tmp_path / "missing", "edgeshard init"), (loose, "chmod 600")):
        with pytest.raises(PeerError, match=message):
            Security(load_config({"secret_file": str(path)}, {}, None))
    with pytest.raises(PeerError, match="tls: needs secret_file"):
        Security(load_config({"tls": True}, {}, None))


def test_edgeshard_init_writes_a_secret_once(tmp_path: Path) -> None:
    path = tmp_path / "cluster.secret"
    run = [sys.executable, "-m", "edgeshard.peer.cli", "init", "--out", str(path)]
    first = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "--secret-file" in first.stdout
    assert len(read_secret(path)) == 32
    second = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and "exists" in second.stderr


def test_edgeshard_status_shows_names_ids_and_how_the_peer_is_guarded() -> None:
    peer = {"id": "3fa9c2d1e0b4a577", "name": "orin-1", "health": "alive", "address": "http://198.18.0.2:7420"}
    peer |= {"memory_bytes": 2**30, "ms_per_token_alone": 12.0, "excluded": None}
    status = {"peer": "3fa9c2d1e0b4a577", "name": "orin-1", "address": "http://198.18.0.2:7420", "cluster": "home"}
    status |= {"ready": False, "reason": "no plan yet", "peers": [peer], "plan": None}
    text = describe_status(status | {"security": {"mode": "open", "tls": False}})
    assert "orin-1" in text and "3fa9c2d1e0b4a577" in text and "OPEN CLUSTER" in text
    assert "secret, TLS" in describe_status(status | {"security": {"mode": "secret", "tls": True}})
