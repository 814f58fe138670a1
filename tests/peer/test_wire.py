"""The wire codec: round trips, and garbage always ends as ProtocolError."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
import torch
from edgeshard.peer.errors import ProtocolError
from edgeshard.peer.pipeline.hidden import hidden_frame, hidden_tensor
from edgeshard.peer.wire import (
    Close,
    Constraint,
    Error,
    Hidden,
    InputIds,
    Open,
    Reused,
    Sampled,
    SamplingParams,
    StageTime,
    decode,
    decode_message,
    encode,
    encode_batch,
    prefix_seed,
)
from hypothesis import given, settings
from hypothesis import strategies as st

sessions = st.text(min_size=1, max_size=32)
positions = st.integers(0, 2**31)


@given(
    session=sessions,
    route=st.lists(st.text(max_size=40), min_size=1, max_size=8),
    data=st.data(),
    temperature=st.floats(0, 5),
    top_k=st.integers(0, 1000),
    top_p=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**31),
    wire=st.sampled_from(["float32", "float16", "bfloat16"]),
)
def test_open_round_trips(session, route, data, temperature, top_k, top_p, seed, wire) -> None:  # type: ignore[no-untyped-def]
    hop = data.draw(st.integers(0, len(route) - 1))
    frame = Open(
        session, tuple(route), hop, "http://o", "layout", SamplingParams(temperature, top_k, top_p, seed), wire
    )
    assert decode(encode(frame)) == frame


@given(sessions, positions, st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=300))
def test_input_ids_round_trip(session: str, position: int, ids: list[int]) -> None:
    frame = InputIds(session, position, tuple(ids))
    assert decode(encode(frame)) == frame


@given(sessions, positions, st.integers(0, 2**31))
def test_small_frames_round_trip(session: str, position: int, number: int) -> None:
    for frame in (Sampled(session, position, number), Close(session), Error(session, "code", "message")):
        assert decode(encode(frame)) == frame
    assert decode(encode(Reused(session, number))) == Reused(session, number)


@given(st.lists(st.binary(min_size=16, max_size=16), max_size=40), st.booleans())
def test_prefix_keys_ride_open_and_close(keys: list[bytes], asked: bool) -> None:
    prefix = tuple(keys) if asked else None
    frame = Open("s", ("http://a",), 0, "http://o", "layout", SamplingParams(), "float32", prefix)
    assert decode(encode(frame)) == frame
    assert decode(encode(Close("s", tuple(keys)))) == Close("s", tuple(keys))


def test_block_keys_chain_the_whole_prefix() -> None:
    from edgeshard.peer.wire import PREFIX_BLOCK_TOKENS as B
    from edgeshard.peer.wire import block_hashes

    seed = prefix_seed("layout", "float32")
    one = block_hashes(seed, list(range(3 * B + 5)))
    assert len(one) == 3 and len(set(one)) == 3  # whole blocks only
    changed = block_hashes(seed, [7, *range(1, 3 * B)])
    assert changed[0] != one[0] and changed[1:] != one[1:]  # a change early on changes every later key
    assert block_hashes(seed, list(range(2 * B))) == one[:2]
    assert block_hashes(prefix_seed("other", "float32"), list(range(3 * B))) != one


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@given(rows=st.integers(1, 9), width=st.integers(1, 70))
def test_hidden_round_trips_exactly_in_its_dtype(dtype: str, rows: int, width: int) -> None:
    torch.manual_seed(rows * 100 + width)
    tensor = torch.randn(rows, width)
    frame = hidden_frame("s", 5, tensor, dtype)  # type: ignore[arg-type]
    back = decode(encode(frame))
    assert isinstance(back, Hidden) and back.shape == (rows, width) and back.dtype == dtype
    expected = tensor.to(getattr(torch, dtype))
    assert torch.equal(hidden_tensor(back), expected)


def test_float32_hidden_is_bit_exact() -> None:
    tensor = torch.tensor([[1.0, -0.0, float("inf"), 3.14159274101257324]])
    assert torch.equal(hidden_tensor(hidden_frame("s", 0, tensor, "float32")), tensor)


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_random_bytes_fail_cleanly(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data)


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=400)
@given(
    st.sampled_from(["open", "input", "hidden", "sampled", "close", "error", "reused", "x"]),
    st.dictionaries(
        st.sampled_from(
            [
                "s",
                "route",
                "hop",
                "origin",
                "layout",
                "temp",
                "top_k",
                "top_p",
                "seed",
                "wire",
                "pre",
                "blk",
                "n",
                "pos",
                "ids",
                "dtype",
                "shape",
                "data",
                "id",
                "code",
                "msg",
                "lp",
                "top",
                "gr",
            ]
        ),
        json_like,
        max_size=12,
    ),
)
def test_structured_garbage_fails_cleanly(kind: str, body: dict[str, object]) -> None:
    with contextlib.suppress(ProtocolError):
        decode(msgpack.packb({"t": kind, **body}, use_bin_type=True))


OPEN = {"t": "open", "s": "a", "route": ["u"], "hop": 0, "origin": "o", "layout": "l"} | {
    "temp": 0.0,
    "top_k": 0,
    "top_p": 1.0,
    "seed": 0,
    "wire": "float32",
}


def test_log_probabilities_and_grammars_ride_open_and_sampled() -> None:
    constraint = Constraint('{"grammars": []}', 17, (4, 5))
    sampling = SamplingParams(0.7, 3, 0.9, 11, logprobs=5, constraint=constraint)
    frame = Open("s", ("u1", "u2"), 1, "o", "l", sampling)
    assert decode(encode(frame)) == frame
    plain = Open("s", ("u1",), 0, "o", "l", SamplingParams())
    assert decode(encode(plain)) == plain and b"lp" not in encode(plain) and b"gr" not in encode(plain)
    sampled = Sampled("s", 9, 42, (), -0.25, ((42, -0.25), (7, -2.0)))
    assert decode(encode(sampled)) == sampled
    assert decode(encode(Sampled("s", 9, 42, (), float("-inf")))).logprob == float("-inf")
    assert decode(encode(Sampled("s", 9, 42))) == Sampled("s", 9, 42)


def test_a_prompts_own_log_probabilities_ride_open_and_sampled() -> None:
    sampling = SamplingParams(0.0, logprobs=1, prompt_logprobs=1, scored=(5, 6, 7))
    frame = Open("s", ("u1",), 0, "o", "l", sampling)
    assert decode(encode(frame)) == frame
    assert b"plp" not in encode(Open("s", ("u1",), 0, "o", "l", SamplingParams()))
    sampled = Sampled("s", 3, 9, (), -0.5, ((9, -0.5),), ((-1.5, ((6, -0.2),)), (-0.1, ((7, -0.1),))))
    assert decode(encode(sampled)) == sampled


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"t": "hidden", "s": "a", "pos": 0, "dtype": "int8", "shape": [1, 2], "data": b"ab"}, "bad-dtype"),
        (
            {"t": "hidden", "s": "a", "pos": 0, "dtype": "float32", "shape": [1, 2], "data": b"abc"},
            "bad-shape",
        ),
        ({"t": "hidden", "s": "a", "pos": 0, "dtype": "float32", "shape": [2], "data": b""}, "bad-shape"),
        ({"t": "input", "s": "a", "pos": 0, "ids": []}, "bad-frame"),
        ({"t": "input", "s": "a", "pos": -1, "ids": [1]}, "bad-frame"),
        ({"t": "input", "s": "a" * 100, "pos": 0, "ids": [1]}, "bad-frame"),
        ({"t": "nope"}, "bad-frame"),
        ({"t": "close", "s": "a", "blk": [b"short"]}, "bad-frame"),
        ({"t": "close", "s": "a", "blk": [b"k" * 16] * 5000}, "bad-frame"),
        ({"t": "reused", "s": "a", "n": -1}, "bad-frame"),
        ({"t": "sampled", "s": "a", "pos": 1, "id": 2, "lp": 0.5, "top": []}, "bad-frame"),
        ({"t": "sampled", "s": "a", "pos": 1, "id": 2, "lp": -0.5, "top": [[1, 0.1]]}, "bad-frame"),
        ({"t": "sampled", "s": "a", "pos": 1, "id": 2, "lp": -0.5, "top": [[1, -0.1]] * 21}, "bad-frame"),
        ({"t": "sampled", "s": "a", "pos": 1, "id": 2, "lp": float("nan"), "top": []}, "bad-frame"),
        ({**OPEN, "lp": 21}, "bad-frame"),
        ({**OPEN, "plp": 21, "sc": [1]}, "bad-frame"),
        ({**OPEN, "plp": 1, "sc": [-1]}, "bad-frame"),
        ({**OPEN, "plp": 1}, "bad-frame"),
        ({"t": "sampled", "s": "a", "pos": 1, "id": 2, "pl": [[0.5, []]]}, "bad-frame"),
        ({"t": "sampled", "s": "a", "pos": 1, "id": 2, "pl": [[-0.5]]}, "bad-frame"),
        ({"t": "sampled", "s": "a", "pos": 1, "id": 2, "pl": "scores"}, "bad-frame"),
        ({**OPEN, "gr": "grammar"}, "bad-frame"),
        ({**OPEN, "gr": {"g": "x", "at": 0, "ans": [-1]}}, "bad-frame"),
        ({**OPEN, "gr": {"g": "x" * (1 << 21), "at": 0, "ans": []}}, "too-large"),
    ],
)
def test_specific_faults_have_codes(body: dict[str, object], code: str) -> None:
    with pytest.raises(ProtocolError) as error:
        decode(msgpack.packb(body, use_bin_type=True))
    assert error.value.code == code


def test_oversized_frames_are_refused() -> None:
    with pytest.raises(ProtocolError) as error:
        decode(b"\x00" * (64 * 2**20 + 1))
    assert error.value.code == "too-large"


def test_a_batch_message_carries_frames_in_order_and_nothing_nested() -> None:
    frames = [Sampled("a", 3, 7), Close("b"), InputIds("c", 0, (1, 2))]
    message = encode_batch([encode(f) for f in frames])
    assert decode_message(message) == frames
    assert decode_message(encode(frames[0])) == frames[:1]  # a plain frame is a message too
    with pytest.raises(ProtocolError):
        decode_message(encode_batch([message]))  # a batch inside a batch
    with pytest.raises(ProtocolError):
        decode(message)  # `decode` reads single frames only
    with pytest.raises(ProtocolError):
        decode_message(msgpack.packb({"t": "batch", "frames": []}))


def test_a_trace_rides_hidden_and_sampled_frames_and_bad_ones_are_refused() -> None:
    trace = (StageTime(1.7e9, 0.001, 0.05, 0.052), StageTime(1.7e9 + 0.06, 0.0, 0.04, 0.041))
    sampled = Sampled("s", 7, 42, trace)
    assert decode(encode(sampled)) == sampled
    hidden = hidden_frame("s", 3, torch.ones(1, 4), "float32")
    traced = decode(encode(Hidden("s", 3, "float32", (1, 4), hidden.data, trace)))
    assert isinstance(traced, Hidden) and traced.trace == trace
    assert decode(encode(Sampled("s", 7, 42))) == Sampled("s", 7, 42)  # no trace: the field is left out
    base = {"t": "sampled", "s": "s", "pos": 7, "id": 42}
    for bad in ([[1.0, -0.1, 0.0, 0.0]], [[1.0, 0.0, 0.0]], [[1.0, True, 0.0, 0.0]], [[0.0] * 4] * 65, "x"):
        with pytest.raises(ProtocolError):
            decode(msgpack.packb(base | {"tm": bad}))
