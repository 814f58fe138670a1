"""`edgeshard doctor`'s conclusions from gathered findings (pure), its output, and that it stays a
light command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from edgeshard.peer.cli.checkup import (
    SIGNATURE_WINDOW_S,
    Check,
    Findings,
    Reach,
    Seen,
    exit_code,
    host_port,
    judge,
    least_offset,
    render,
    to_json,
)
from edgeshard.peer.cli.doctor import _candidate_apis, add_arguments, gather, key_for

GiB = 2**30


def peer(peer_id: str, health: str = "alive", excluded: str | None = None, port: int = 7420) -> dict[str, Any]:
    others = [p for p in ("a", "b", "c") if p != peer_id]
    return {
        "id": peer_id,
        "name": f"n{peer_id}",
        "address": f"http://10.0.0.{ord(peer_id) - 96}:{port}",
        "health": health,
        "memory_bytes": 2 * GiB,
        "excluded": excluded,
        "links": [{"peer": p, "name": f"n{p}", "mbps": 512.0, "rtt_ms": 1.0} for p in others],
    }


def status(**changes: Any) -> dict[str, Any]:
    document = {
        "peer": "a",
        "name": "na",
        "cluster": "home",
        "model": {"spec": "smollm2", "fingerprint": "f" * 64},
        "dtype": "float32",
        "phase": "serving",
        "ready": True,
        "reason": None,
        "plan": {
            "layout_id": "L1",
            "objective": "latency",
            "stages": [{"device": "na", "start": 0, "end": 16}, {"device": "nb", "start": 16, "end": 32}],
        },
        "shard": {"rss_bytes": GiB, "weight_bytes": GiB // 2},
        "peers": [peer("a"), peer("b"), peer("c")],
        "security": {"mode": "secret"},
    }
    return document | changes


def healthy(**changes: Any) -> Findings:
    found = Findings(
        api="http://127.0.0.1:7421",
        status=status(),
        mdns=[Seen("a", "home", "10.0.0.1:7420"), Seen("b", "home"), Seen("c", "home")],
        mdns_seconds=2,
        reach={p: Reach(connect_ms=0.4) for p in "abc"},
        skew_s={"a": 0.1, "b": -0.4},
        memory_available=4 * GiB,
    )
    for name, value in changes.items():
        setattr(found, name, value)
    return found


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_a_healthy_cluster_passes_every_check() -> None:
    checks = judge(healthy())
    assert [c.name for c in checks] == ["api", "mdns", "ports", "links", "agreement", "memory", "clock", "plan"]
    assert {c.name: c.level for c in checks} == dict.fromkeys((c.name for c in checks), "ok")
    assert exit_code(checks) == 0
    text = render(checks)
    assert text.splitlines()[0].startswith("✓ api")
    assert "hint" not in text
    assert "nb           512 Mbps, 1 ms round trip measured; connect 0.4 ms from here" in text


def test_an_unreachable_api_fails_with_a_hint_and_still_browses_mdns() -> None:
    checks = judge(Findings(api="http://127.0.0.1:9", api_error="cannot reach: refused", mdns=[], mdns_seconds=2))
    assert [(c.name, c.level) for c in checks] == [("api", "fail"), ("mdns", "warn")]
    assert exit_code(checks) == 1
    text = render(checks)
    assert "✗ api        no answer from the peer's API: cannot reach: refused" in text
    assert "hint: is edgeshard-peer running here" in text
    assert "! mdns       no mDNS peers seen on this interface in 2 s" in text


def test_a_refused_key_is_named_as_such() -> None:
    refused = Findings(api="u", api_error="HTTP 401: No API key", api_status=401)
    assert "--api-key" in (judge(refused)[0].hint or "")
    wrong = Findings(api="u", api_error="HTTP 401: Incorrect API key provided", api_status=401, key_given=True)
    assert "is not the peer's api_key" in (judge(wrong)[0].hint or "")


def test_mdns_absent_is_a_warning_and_strangers_are_told_apart() -> None:
    alone = by_name(judge(healthy(mdns=[Seen("z", "office")])))["mdns"]
    assert alone.level == "warn" and "only other clusters'" in alone.summary
    assert "peers of other clusters (office)" in alone.details[-1]
    broken = by_name(judge(healthy(mdns=None, mdns_error="OSError: no multicast route")))["mdns"]
    assert broken.level == "warn" and "no multicast route" in broken.summary
    unknown = by_name(judge(healthy(mdns=[Seen("a", "home"), Seen("q", "home")])))["mdns"]
    assert unknown.level == "warn" and "not in the peer's view: q" in unknown.summary
    partial = by_name(judge(healthy(mdns=[Seen("a", "home")])))["mdns"]
    assert partial.level == "ok" and "not announced: nb, nc" in partial.summary


def test_mdns_clusters_match_by_their_whole_name() -> None:
    near = [Seen("a", "home"), Seen("b", "home2"), Seen("c", "home-2")]
    mdns = by_name(judge(healthy(mdns=near)))["mdns"]
    assert mdns.level == "ok" and mdns.summary.startswith("1 peers of this cluster")
    assert "not announced: nb, nc" in mdns.summary
    assert mdns.details[-1] == "also seen: peers of other clusters (home-2, home2)"


def test_an_unreachable_live_peer_fails_a_dead_one_warns() -> None:
    reach = {"a": Reach(connect_ms=0.3), "b": Reach(error="Connection refused"), "c": Reach(connect_ms=1.0)}
    ports = by_name(judge(healthy(reach=reach)))["ports"]
    assert ports.level == "fail" and "nb (Connection refused)" in ports.summary
    assert ports.hint and "firewall" in ports.hint
    dead = status(peers=[peer("a"), peer("b", health="dead"), peer("c")])
    ports = by_name(judge(healthy(status=dead, reach=reach)))["ports"]
    assert ports.level == "warn"
    suspect = status(peers=[peer("a"), peer("b", health="suspect"), peer("c")])
    ports = by_name(judge(healthy(status=suspect)))["ports"]
    assert ports.level == "warn" and ports.summary == "nb answers here but is suspect in the view"


def test_a_loopback_address_among_lan_ones_fails() -> None:
    loop = peer("c") | {"address": "http://127.0.0.1:7420"}
    ports = by_name(judge(healthy(status=status(peers=[peer("a"), peer("b"), loop]))))["ports"]
    assert ports.level == "fail" and "loopback" in ports.summary


def test_slow_or_unmeasured_links_warn() -> None:
    own = peer("a")
    own["links"] = [{"peer": "b", "name": "nb", "mbps": 4.0, "rtt_ms": 3.0}]
    links = by_name(judge(healthy(status=status(peers=[own, peer("b"), peer("c")]))))["links"]
    assert links.level == "warn"
    assert links.summary == "slow or far: nb; not measured yet: nc"


def test_excluded_peers_and_other_model_files_fail_the_agreement() -> None:
    left_out = peer("c", excluded="plans with other settings (wire3/float16/..., ours wire3/float32/...)")
    agreement = by_name(judge(healthy(status=status(peers=[peer("a"), peer("b"), left_out]))))["agreement"]
    assert agreement.level == "fail" and "nc left out: plans with other settings" in agreement.summary
    other = status(peer="b", model={"fingerprint": "e" * 64})
    agreement = by_name(judge(healthy(others={"b": other})))["agreement"]
    assert agreement.level == "fail" and "nb runs model file eeeeeeeeeeee" in agreement.summary
    same = status(peer="b")
    agreement = by_name(judge(healthy(others={"b": same})))["agreement"]
    assert agreement.level == "ok" and "2 peers' statuses" in agreement.summary
    moving = status(peer="b", plan={"layout_id": "L2", "stages": []})
    assert by_name(judge(healthy(others={"b": moving})))["agreement"].level == "warn"


@pytest.mark.parametrize(
    ("available", "level"),
    [(4 * GiB, "ok"), (200 * 2**20, "warn"), (32 * 2**20, "fail")],
)
def test_memory_headroom(available: int, level: str) -> None:
    assert by_name(judge(healthy(memory_available=available)))["memory"].level == level


def test_memory_of_a_remote_peer_is_not_judged_and_a_withdrawn_one_fails() -> None:
    assert by_name(judge(healthy(memory_local=False)))["memory"].level == "warn"
    failed = status(phase="failed", ready=False, reason="load failed")
    assert by_name(judge(healthy(status=failed)))["memory"].level == "fail"


@pytest.mark.parametrize(("skew", "level"), [(1.4, "ok"), (-5.0, "warn"), (SIGNATURE_WINDOW_S, "fail")])
def test_clock_skew(skew: float, level: str) -> None:
    clock = by_name(judge(healthy(skew_s={"a": 0.0, "b": skew})))["clock"]
    assert clock.level == level
    assert "1 s resolution" in clock.summary


def test_the_date_header_gives_the_least_skew_it_allows() -> None:
    assert least_offset(1000.0, 1000.2, 1000.4) == 0.0  # read within our round trip's second
    assert least_offset(1000.0, 999.0, 1003.0) == 0.0  # a slow answer allows any small skew
    assert least_offset(1010.0, 1000.2, 1000.4) == pytest.approx(9.6)  # ahead: at least 9.6 s
    assert least_offset(990.0, 1000.2, 1000.4) == pytest.approx(-9.2)  # behind: at least 9.2 s


def test_only_the_local_clock_is_a_warning() -> None:
    clock = by_name(judge(healthy(skew_s={"a": 0.2})))["clock"]
    assert clock.level == "warn" and "--peer-api" in (clock.hint or "")


def test_the_signature_window_is_the_authenticators() -> None:
    from edgeshard.discovery.auth import WINDOW_S

    assert SIGNATURE_WINDOW_S == WINDOW_S


def test_a_peer_that_is_not_ready_fails_with_its_reason_and_a_hint() -> None:
    stuck = status(phase="infeasible", ready=False, reason="the live peers hold 1.0 GiB of 1.5 GiB", plan=None)
    plan = by_name(judge(healthy(status=stuck)))["plan"]
    assert plan.level == "fail" and "the live peers hold 1.0 GiB" in plan.summary
    assert plan.hint and "--max-memory" in plan.hint
    ready = by_name(judge(healthy()))["plan"]
    assert ready.details == ("layout L1 (latency): na[0:16) → nb[16:32)",)


def test_json_is_a_list_of_plain_objects() -> None:
    document = json.loads(json.dumps(to_json(judge(healthy(mdns=[])))))
    assert document[1] == {
        "name": "mdns",
        "level": "warn",
        "summary": "no mDNS peers seen on this interface in 2 s",
        "details": [],
        "hint": document[1]["hint"],
    }


def test_addresses_with_and_without_a_scheme() -> None:
    assert host_port("http://10.0.0.1:7420") == ("10.0.0.1", 7420)
    assert host_port("127.0.0.1:9") == ("127.0.0.1", 9)
    assert host_port("https://[fe80::1]:7420") == ("fe80::1", 7420)


def test_doctor_is_a_light_command() -> None:
    probe = (
        "import json, sys\nfrom edgeshard.peer.cli.main import main\n"
        "code = main(['doctor', '--api', 'http://127.0.0.1:9', '--mdns-seconds', '0', '--json'])\n"
        "heavy = ('torch', 'transformers', 'aiohttp', 'numpy')\n"
        "print(json.dumps([code, sorted(m for m in heavy if m in sys.modules)]))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    code, loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert (code, loaded) == (1, [])
    checks = json.loads("\n".join(run.stdout.strip().splitlines()[:-1]))
    assert [(c["name"], c["level"]) for c in checks] == [("api", "fail"), ("mdns", "warn")]


def test_other_apis_are_guessed_on_the_local_apis_port_or_the_default() -> None:
    view = status(peers=[peer("a"), peer("b"), peer("c") | {"address": "http://[fe80::3]:7420"}])
    assert _candidate_apis("http://127.0.0.1:8000", view, []) == [
        ("http://10.0.0.2:8000", True),
        ("http://[fe80::3]:8000", True),
    ]
    given = "http://10.0.0.2:7421"
    assert _candidate_apis("http://localhost", view, [given]) == [  # no port: the API's default
        (given, False),
        ("http://[fe80::3]:7421", True),
    ]


@pytest.mark.parametrize(
    ("security", "guessed", "sent"),
    [
        ({"mode": "secret"}, True, "sk"),
        ({"mode": "secret", "tls": True}, True, "sk"),
        ({"mode": "open"}, True, ""),  # any host can be in an open cluster's view
        (None, True, ""),  # unknown: the key stays here
        ({"mode": "open"}, False, "sk"),  # --peer-api: the user named it
    ],
)
def test_the_key_goes_to_guessed_apis_only_in_a_closed_cluster(
    security: dict[str, Any] | None, guessed: bool, sent: str
) -> None:
    assert key_for(guessed, status(security=security), "sk") == sent


class Recorder(ThreadingHTTPServer):
    daemon_threads = True
    status: dict[str, Any]
    keys: list[str | None]


class StatusHandler(BaseHTTPRequestHandler):
    """The status it is given; every request's Authorization is kept."""

    server: Recorder

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.keys.append(self.headers.get("Authorization"))
        payload = json.dumps(self.server.status).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def doctor_args(api: str, **changes: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--api", api, "--mdns-seconds", "0", "--timeout", "0.5", "--api-key", "sk"])
    for name, value in changes.items():
        setattr(args, name, value)
    return args


@pytest.mark.parametrize(("mode", "guessed_key"), [("secret", "Bearer sk"), ("open", None)])
def test_doctor_sends_the_key_to_a_guessed_api_only_in_a_closed_cluster(mode: str, guessed_key: str | None) -> None:
    server = Recorder(("127.0.0.1", 0), StatusHandler)
    port = server.server_address[1]
    server.keys = []
    # b's address is on this host: its API is guessed at the local API's port, i.e. this server.
    here = {"address": "http://127.0.0.1:9"}
    server.status = status(peers=[peer("a") | here, peer("b") | here], security={"mode": mode})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        found = gather(doctor_args(f"http://127.0.0.1:{port}"))
    finally:
        server.shutdown()
        server.server_close()
    assert found.status is not None and found.api_error is None
    assert server.keys == ["Bearer sk", guessed_key]


@pytest.mark.parametrize("api", ["not http", "http://127.0.0.1:None", "http://127.0.0.1:x", "127.0.0.1:7421"])
def test_an_api_that_is_not_one_is_a_failed_check_not_a_traceback(api: str, not_http: str) -> None:
    found = gather(doctor_args(not_http if api == "not http" else api))
    assert found.status is None and found.api_error
    assert judge(found)[0].level == "fail"
