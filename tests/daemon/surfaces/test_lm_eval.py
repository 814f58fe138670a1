"""lm-evaluation-harness against real peers, as an evaluator runs it: `lm_eval --model
local-completions` on a multiple-choice task (log-likelihoods from the prompt's own
log-probabilities, `echo` with `logprobs`) and `--model local-chat-completions` on a
generation task, both on data shipped in tests/data/lm_eval (no hub). Each choice's score
equals the one computed directly from transformers' model of the same file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from edgeshard.peer.model.files import GGUFModel
from transformers import PreTrainedModel

from ..peers import Peer, client

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
DATA = Path(__file__).resolve().parents[2] / "data" / "lm_eval"
FACTS = f"""task: edgeshard_facts
dataset_path: json
dataset_kwargs:
  data_files:
    test: {DATA / "facts.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""
ANSWERS = f"""task: edgeshard_answers
dataset_path: json
dataset_kwargs:
  data_files:
    test: {DATA / "answers.jsonl"}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 12
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
    ignore_case: true
    ignore_punctuation: true
"""


def lm_eval(tmp_path: Path, model: str, model_args: str, task: str, *extra: str) -> list[dict[str, Any]]:
    """Run the harness's CLI offline; its logged samples."""
    (tmp_path / "tasks").mkdir(exist_ok=True)
    (tmp_path / "tasks" / "facts.yaml").write_text(FACTS)
    (tmp_path / "tasks" / "answers.yaml").write_text(ANSWERS)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [
        *(sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args, "--tasks", task),
        *("--include_path", str(tmp_path / "tasks"), "--output_path", str(tmp_path / "out"), "--log_samples"),
        *extra,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    (samples,) = (tmp_path / "out").rglob(f"samples_{task}_*.jsonl")
    return [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]


def direct_loglikelihood(model: PreTrainedModel, tokenizer: Any, context: str, continuation: str) -> float:
    """The continuation's log-likelihood as the harness splits the pair, from transformers' model."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    start = len(tokenizer.encode(context, add_special_tokens=False))
    with torch.no_grad():
        rows = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
    return sum(float(rows[i - 1, whole[i]]) for i in range(start, len(whole)))


def test_local_completions_log_likelihoods_equal_the_models_own(
    surface_cluster: list[Peer], default_source: GGUFModel, reference_model: PreTrainedModel, tmp_path: Path
) -> None:
    tokenizer = default_source.tokenizer()
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    args = (
        f"model={MODEL},base_url={surface_cluster[0].api}/v1/completions,tokenizer={tmp_path / 'tokenizer'},"
        "tokenizer_backend=huggingface,num_concurrent=2,max_retries=1"
    )
    samples = lm_eval(tmp_path, "local-completions", args, "edgeshard_facts")
    assert len(samples) == 6
    correct = 0
    for sample in samples:
        scores = [float(resp[0][0]) for resp in sample["resps"]]
        expected = [direct_loglikelihood(reference_model, tokenizer, *arguments) for arguments in _pairs(sample)]
        assert scores == pytest.approx(expected, abs=5e-3), sample["doc"]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == sample["doc"]["answer"])
    assert sum(s["acc"] for s in samples) == correct


def _pairs(sample: dict[str, Any]) -> list[tuple[str, str]]:
    """The (context, continuation) of each choice, as the samples log them."""
    return [(args["arg_0"], args["arg_1"]) for args in sample["arguments"].values()]


def test_local_chat_completions_answers_as_the_chat_api_does(surface_cluster: list[Peer], tmp_path: Path) -> None:
    args = f"model={MODEL},base_url={surface_cluster[1].api}/v1/chat/completions,num_concurrent=1,max_retries=1"
    samples = lm_eval(tmp_path, "local-chat-completions", args, "edgeshard_answers", "--apply_chat_template")
    assert len(samples) == 3
    api = client(surface_cluster[1])
    for sample in samples:
        messages: Any = [{"role": "user", "content": sample["doc"]["question"]}]
        direct = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0, stop=["\n"])
        assert sample["resps"][0][0] == direct.choices[0].message.content
