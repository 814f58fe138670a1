"""`edgeshard generate` as a user runs it (real subprocesses, real sockets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeshard.peer.cli", "generate", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _json(*args: str) -> dict[str, Any]:
    result = generate(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_json_output_and_plan_file(tmp_path: Path) -> None:
    even = _json("--chat", "What is the capital of France?", "--stages", "3", "--max-tokens", "12")
    assert set(even) == {"text", "token_ids", "prompt_tokens", "ttft_ms", "ms_per_token", "stages"}
    assert "Paris" in even["text"]
    assert [(s["start"], s["end"]) for s in even["stages"]] == [(0, 11), (11, 21), (21, 32)]
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps({"stages": [{"device": "a", "start": 0, "end": 5}, {"device": "b", "start": 5, "end": 32}]})
    )
    planned = _json("--chat", "What is the capital of France?", "--plan", str(plan), "--max-tokens", "12")
    assert [(s["start"], s["end"]) for s in planned["stages"]] == [(0, 5), (5, 32)]
    assert planned["token_ids"] == even["token_ids"]


def test_streams_text_and_honours_stop_strings() -> None:
    result = generate("--prompt", "One, two, three, four,", "--stages", "2", "--max-tokens", "20", "--stop", " six")
    assert result.returncode == 0, result.stderr
    assert "five" in result.stdout and "six" not in result.stdout


def test_stage_processes_hold_only_their_share_of_memory() -> None:
    float32 = ("--weights", "float32")  # weights big enough for the stages' shares to show in RSS
    single = _json("--chat", "Hi", "--stages", "1", "--processes", "--max-tokens", "4", *float32)
    split = _json("--chat", "Hi", "--stages", "3", "--processes", "--max-tokens", "4", *float32)
    assert single["token_ids"] == split["token_ids"]
    whole = single["stages"][0]
    middle = split["stages"][1]
    assert middle["weight_bytes"] < whole["weight_bytes"] / 3
    # Process RSS includes torch's own ~0.5 GB; the weights a stage does not hold are not in it.
    assert whole["rss_bytes"] - middle["rss_bytes"] > 0.6 * (whole["weight_bytes"] - middle["weight_bytes"])


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    bad_plan = tmp_path / "plan.json"
    bad_plan.write_text(json.dumps({"stages": [{"start": 0, "end": 7}]}))
    result = generate("--plan", str(bad_plan), "--max-tokens", "2")
    assert result.returncode == 2 and "does not cover" in result.stderr and "Traceback" not in result.stderr
    missing = generate("--model", str(tmp_path / "nothing.gguf"), "--max-tokens", "2")
    assert missing.returncode == 2 and "not 'default'" in missing.stderr
