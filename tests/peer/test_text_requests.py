"""Validation of /v1/completions bodies and of the options both completion routes share (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from edgeshard.peer.api.errors import RequestError
from edgeshard.peer.api.schemas import parse_chat_request, parse_text_request

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("Once", "Once"), (["Once"], "Once"), ([1, 2, 3], [1, 2, 3]), ([[4, 5]], [4, 5])],
)
def test_one_prompt_as_text_or_token_ids(prompt: Any, expected: Any) -> None:
    request = parse_text_request({"prompt": prompt}, "m", 256)
    assert request.prompt == expected and request.max_tokens == 16 and not request.echo


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"prompt": [True]}, "prompt"),
        ({"prompt": "a", "echo": "yes"}, "echo"),
        ({"prompt": "a", "suffix": "z"}, "suffix"),
        ({"prompt": "a", "best_of": 3}, "best_of"),
        ({"prompt": "a", "n": 2}, "n"),
        ({"prompt": "a", "logprobs": 21}, "logprobs"),
        ({"prompt": "a", "logprobs": True}, "logprobs"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),  # 0 only with echo (scoring the prompt)
        ({"prompt": "a", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "a", "stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ],
)
def test_what_a_text_completion_refuses_names_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as refused:
        parse_text_request(body, "m", 256)
    assert refused.value.param == param and refused.value.status == 400


def test_echo_with_logprobs_asks_for_the_prompts_own_and_may_answer_nothing() -> None:
    asked = parse_text_request({"prompt": [1, 2, 3], "echo": True, "logprobs": 1, "max_tokens": 0}, "m", 256)
    assert asked.max_tokens == 0 and asked.sampling.prompt_logprobs == 1 and asked.sampling.logprobs == 1
    assert parse_text_request({"prompt": "a", "logprobs": 2}, "m", 256).sampling.prompt_logprobs == -1


def test_chat_requests_share_n_logprobs_and_stream_options() -> None:
    asked = parse_chat_request({"messages": HI, "stream": True, "stream_options": {"include_usage": True}}, "m")
    assert asked.include_usage and asked.stream
    assert not parse_chat_request({"messages": HI, "n": 1, "logprobs": False}, "m").include_usage
    assert parse_chat_request({"messages": HI, "logprobs": True, "top_logprobs": 3}, "m").sampling.logprobs == 3
    assert parse_chat_request({"messages": HI, "logprobs": True}, "m").sampling.logprobs == 0
    assert parse_chat_request({"messages": HI}, "m").sampling.logprobs == -1
    for extra, param in (({"n": 3}, "n"), ({"logprobs": 1}, "logprobs"), ({"top_logprobs": 1}, "top_logprobs")):
        with pytest.raises(RequestError) as refused:
            parse_chat_request({"messages": HI, **extra}, "m")
        assert refused.value.param == param
