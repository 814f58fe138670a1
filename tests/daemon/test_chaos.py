"""scripts/chaos --short: SIGKILL and SIGSTOP of a stage, and a stranger without the cluster's
secret, each while four chats stream, on the testbed (real processes in network namespaces).

Needs root and iproute2 (CI runs as root); it is skipped elsewhere, and says so. About 4 minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
    pytest.mark.timeout(900),
]
ROOT = Path(__file__).resolve().parents[2]


def test_short_chaos_loses_no_request_crashes_no_peer_and_keeps_the_stranger_out(tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    env = {**os.environ, "EDGESHARD_TESTBED_STATE": str(tmp_path / "testbed")}
    try:
        run = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "bench" / "chaos.py"), "--short", "--json", str(report)],
            capture_output=True,
            text=True,
            timeout=840,  # the script bounds every wait itself; this only catches a hang of the script
            env=env,
        )
    finally:
        # The script takes its testbed down itself, but not when it is killed (a timeout here,
        # or pytest's): its peers run in sessions of their own and would outlive it, and their
        # namespaces would fail every later testbed. Only a testbed this test brought up.
        if (tmp_path / "testbed" / "hosts.json").exists():
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run([str(ROOT / "scripts" / "testbed"), "down"], env=env, capture_output=True, timeout=120)
    output = run.stdout + run.stderr[-4000:]
    assert report.exists(), output
    document = json.loads(report.read_text())
    rows = {row["fault"]: row for row in document["rows"]}
    assert set(rows) == {"sigkill", "sigstop", "stranger"}, output
    for row in rows.values():
        assert row["lost"] == 0, output  # every request answered or failed with a message
        assert row["crashes"] == 0, output
        assert row["whole_again"], output
        assert row["sent"] == 4 + row["probes"] and row["probes"] >= 1, output  # four chats, and the probes
        # Greedy answers replayed after a fail-over are the undisturbed ones, token for token; a
        # clear error is acceptable, another answer is not.
        assert row["differ"] == 0, output
        assert row["identical"] + row["failed"] == row["sent"], output
        assert row["recovery_s"] is not None, output

    stranger = document["stranger"]
    assert stranger["up"], output  # its peer ran: it had every chance to get in
    assert stranger["seen_by"] == [], output  # ... and no member ever listed it
    accepted = [f"{r['target']}: {r['request']} → {r['answer']}" for r in stranger["hostile"] if r["accepted"]]
    assert accepted == [], "\n".join(accepted)
    assert run.returncode == 0, output

    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "es-h" not in namespaces  # the testbed came down
