"""The OpenAI surface clients expect, through OpenAI's own client against real peers: text
completions (whole and streamed), usage in streams when asked, clear refusals, and where each
token's time went beside the planner's prediction."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from ..peers import Peer, agreed, client

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"


def test_text_completions_whole_and_streamed_agree_token_for_token(surface_cluster: list[Peer]) -> None:
    openai_client = client(surface_cluster[0])
    whole = openai_client.completions.create(
        model=MODEL, prompt="The three primary colours are", max_tokens=12, temperature=0
    )
    text = whole.choices[0].text
    assert whole.object == "text_completion" and text.strip()
    assert whole.usage is not None and whole.usage.completion_tokens == len(whole.model_extra["edgeshard"]["token_ids"])
    chunks = list(
        openai_client.completions.create(
            model=MODEL,
            prompt="The three primary colours are",
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_unsupported_options_are_refused_clearly(surface_cluster: list[Peer]) -> None:
    openai_client = client(surface_cluster[1])
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.chat.completions.create(model=MODEL, messages=hi, n=2)  # type: ignore[arg-type]
    assert "n must be 1" in str(refused.value)
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.completions.create(model=MODEL, prompt="hi", max_tokens=-1)
    assert "max_tokens" in str(refused.value)
    with pytest.raises(openai.BadRequestError) as refused:
        tool: Any = {"type": "function", "function": {"name": "two words", "parameters": {"type": "object"}}}
        openai_client.chat.completions.create(model=MODEL, messages=hi, tools=[tool])  # type: ignore[arg-type]
    assert "tools[0].function.name" in str(refused.value)


def test_a_reply_says_where_its_time_went_per_stage_and_link_beside_the_plan(surface_cluster: list[Peer]) -> None:
    plan = agreed(surface_cluster)
    assert plan is not None
    devices = [stage["device"] for stage in plan["stages"]]
    stream = client(surface_cluster[2]).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a large river."}],
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    closing = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    timing = closing.model_extra["edgeshard"]["timing"]
    tokens = len(closing.model_extra["edgeshard"]["token_ids"])
    assert timing["steps"] >= tokens - 1 >= 1
    assert [s["device"] for s in timing["stages"]] == devices
    assert all(s["compute_ms"] > 0 and s["predicted_compute_ms"] > 0 for s in timing["stages"])
    assert [link["from"] for link in timing["links"]] == ["origin", *devices]
    assert all(link["predicted_ms"] is not None for link in timing["links"][1:])
    held = sum(s["queue_ms"] + s["compute_ms"] + s["other_ms"] for s in timing["stages"])
    assert held + timing["transfer_ms"] == pytest.approx(timing["ms_per_token"], rel=0.02, abs=0.1)
    assert timing["predicted_ms_per_token"] == pytest.approx(plan["latency_ms"], rel=0.01)
