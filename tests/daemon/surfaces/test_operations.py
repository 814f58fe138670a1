"""Operations against a real 3-peer cluster: /metrics as Prometheus scrapes it, and `edgeshard
doctor` as a person runs it (a subprocess), on a cluster that formed and on a port where no peer
listens."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from ..peers import Peer, client, free_port

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"


def scrape(peer: Peer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics, parsed as Prometheus would: every sample by (name, sorted labels)."""
    with urllib.request.urlopen(peer.api + "/metrics", timeout=30) as response:
        assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def outcome(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return found[("edgeshard_requests_total", (("outcome", name),))]


def stage_counts(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str) -> dict[str, float]:
    """device → observations, for one per-stage histogram."""
    return {dict(labels)["device"]: value for (name, labels), value in found.items() if name == metric + "_count"}


def test_metrics_count_tokens_outcomes_and_every_stage_step(surface_cluster: list[Peer]) -> None:
    peer = surface_cluster[0]
    before = scrape(peer)
    tokens, steps, devices = 0, 0, set()
    for question in ("Name a colour.", "Count to five."):
        reply = client(peer).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=12
        )
        assert reply.usage is not None
        timing: dict[str, Any] = (reply.model_extra or {})["edgeshard"]["timing"]
        tokens += reply.usage.completion_tokens
        steps += timing["steps"]
        devices |= {stage["device"] for stage in timing["stages"]}
    after = scrape(peer)
    status = peer.status()
    assert status is not None and status["plan"] is not None
    assert devices == {stage["device"] for stage in status["plan"]["stages"]}

    name = "edgeshard_tokens_generated_total"
    assert after[(name, ())] - before.get((name, ()), 0) == tokens
    assert outcome(after, "completed") - outcome(before, "completed") == 2
    for metric in ("edgeshard_stage_compute_seconds", "edgeshard_stage_queue_seconds"):
        grew = stage_counts(after, metric)
        old = stage_counts(before, metric)
        assert {device: grew[device] - old.get(device, 0) for device in grew} == dict.fromkeys(devices, steps)
    assert after[("edgeshard_time_to_first_token_seconds_count", ())] >= 2
    transfer = {dict(labels)["from"] for name, labels in after if name == "edgeshard_link_transfer_seconds_count"}
    assert transfer == {"origin", *devices}
    assert after[("edgeshard_peers", (("health", "alive"),))] == 3
    assert after[("edgeshard_peers", (("health", "dead"),))] == 0
    assert after[("edgeshard_ready", ())] == 1
    assert after[("edgeshard_plan_changes_total", ())] >= 1
    failovers = ("edgeshard_failovers_total", ())
    assert after[failovers] - before[failovers] == 0  # the session cluster is shared: a change, not a total


def test_an_invalid_request_counts_as_invalid(surface_cluster: list[Peer]) -> None:
    peer = surface_cluster[1]
    before = outcome(scrape(peer), "invalid")
    body = json.dumps({"model": MODEL, "messages": [], "max_tokens": 4}).encode()
    request = urllib.request.Request(peer.api + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    refused.value.close()  # it holds the connection
    assert refused.value.code == 400
    assert outcome(scrape(peer), "invalid") == before + 1


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    """`edgeshard doctor` as a person runs it."""
    command = [sys.executable, "-m", "edgeshard.peer.cli", "doctor", "--mdns-seconds", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_doctor_passes_on_a_formed_cluster(surface_cluster: list[Peer]) -> None:
    first, *others = surface_cluster
    run = doctor("--api", first.api, "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    checks = {check["name"]: check for check in json.loads(run.stdout)}
    assert {name: check["level"] for name, check in checks.items() if check["level"] == "fail"} == {}
    # the cluster runs with --no-mdns: nothing announced is a warning, not a failure
    assert checks["mdns"]["level"] == "warn"
    assert checks["ports"]["level"] == "ok"
    ports = checks["ports"]["details"]
    assert sorted(line.split()[0] for line in ports) == ["p1", "p2", "p3"]
    assert all(" connect " in line and line.endswith(" ms") for line in ports)
    assert {line.split()[0] for line in checks["links"]["details"]} == {"p2", "p3"}
    assert all("from here" in line for line in checks["links"]["details"])
    assert checks["plan"]["level"] == "ok" and checks["plan"]["summary"].endswith("ready")
    assert checks["agreement"]["level"] == "ok"

    # with the other peers' APIs it compares their statuses and reads their clocks
    run = doctor("--api", first.api, *(part for peer in others for part in ("--peer-api", peer.api)))
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert any(line.startswith("✓ agreement") and "3 peers' statuses" in line for line in lines), run.stdout
    assert any(line.startswith("✓ clock") and "3 peers' clocks" in line for line in lines), run.stdout
    assert any(line.startswith("! mdns") and "no mDNS peers seen" in line for line in lines), run.stdout


def test_doctor_fails_clearly_where_no_peer_listens() -> None:
    run = doctor("--api", f"http://127.0.0.1:{free_port()}", "--mdns-seconds", "0")
    assert run.returncode == 1
    first, *rest = run.stdout.splitlines()
    assert first.startswith("✗ api") and "Connection refused" in first
    assert any("hint: is edgeshard-peer running here" in line for line in rest)
