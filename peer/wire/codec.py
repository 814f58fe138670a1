"""Frames ⇄ msgpack bytes: encoding, and decoding that validates structure, types and sizes."""

from __future__ import annotations

import math
from typing import Any

import msgpack

from ..errors import ProtocolError
from .frames import (
    MAX_BATCH_FRAMES,
    MAX_FRAME_BYTES,
    MAX_GRAMMAR_BYTES,
    MAX_PREFIX_BLOCKS,
    MAX_ROUTE,
    MAX_TOKENS,
    MAX_TOP_LOGPROBS,
    PREFIX_KEY_BYTES,
    WIRE_ITEMSIZE,
    Close,
    Constraint,
    Error,
    Frame,
    Hidden,
    InputIds,
    Open,
    Reused,
    Sampled,
    SamplingParams,
    StageTime,
    Trace,
)


def encode(frame: Frame) -> bytes:
    """A frame as msgpack bytes."""
    match frame:
        case Open():
            body: dict[str, Any] = {
                "t": "open",
                "s": frame.session,
                "route": list(frame.route),
                "hop": frame.hop,
                "origin": frame.origin,
                "layout": frame.layout_id,
                "temp": frame.sampling.temperature,
                "top_k": frame.sampling.top_k,
                "top_p": frame.sampling.top_p,
                "seed": frame.sampling.seed,
                "wire": frame.wire_dtype,
            }
            if frame.sampling.logprobs >= 0:
                body["lp"] = frame.sampling.logprobs
            if frame.sampling.prompt_logprobs >= 0:
                body["plp"] = frame.sampling.prompt_logprobs
                body["sc"] = list(frame.sampling.scored)
            if (constraint := frame.sampling.constraint) is not None:
                body["gr"] = {"g": constraint.grammar, "at": constraint.start, "ans": list(constraint.answered)}
            if frame.prefix is not None:
                body["pre"] = list(frame.prefix)
        case Reused():
            body = {"t": "reused", "s": frame.session, "n": frame.blocks}
        case InputIds():
            body = {"t": "input", "s": frame.session, "pos": frame.position, "ids": list(frame.token_ids)}
        case Hidden():
            body = {
                "t": "hidden",
                "s": frame.session,
                "pos": frame.position,
                "dtype": frame.dtype,
                "shape": list(frame.shape),
                "data": frame.data,
            }
            _put_trace(body, frame.trace)
        case Sampled():
            body = {"t": "sampled", "s": frame.session, "pos": frame.position, "id": frame.token_id}
            _put_trace(body, frame.trace)
            if frame.logprob is not None:
                body["lp"] = frame.logprob
                body["top"] = [[token, logprob] for token, logprob in frame.top]
            if frame.prompt:
                body["pl"] = [[logprob, [list(pair) for pair in top]] for logprob, top in frame.prompt]
        case Close():
            body = {"t": "close", "s": frame.session}
            if frame.blocks:
                body["blk"] = list(frame.blocks)
        case Error():
            body = {"t": "error", "s": frame.session, "code": frame.code, "msg": frame.message}
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def _put_trace(body: dict[str, Any], trace: Trace) -> None:
    if trace:
        body["tm"] = [[t.arrived, t.queue_s, t.compute_s, t.hold_s] for t in trace]


# --- decoding with validation --------------------------------------------------------------


def _get(body: dict[Any, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in body:
        raise ProtocolError("bad-frame", f"missing {key!r}")
    value = body[key]
    if isinstance(value, bool) and kind is not bool:
        raise ProtocolError("bad-frame", f"{key!r} has the wrong type")
    if not isinstance(value, kind):
        raise ProtocolError("bad-frame", f"{key!r} has the wrong type")
    return value


def _index(body: dict[Any, Any], key: str) -> int:
    value: int = _get(body, key, int)
    if not 0 <= value < 1 << 32:
        raise ProtocolError("bad-frame", f"{key!r} out of range")
    return value


def _session(body: dict[Any, Any]) -> str:
    session: str = _get(body, "s", str)
    if len(session) > 64:
        raise ProtocolError("bad-frame", "session id too long")
    return session


def _text(body: dict[Any, Any], key: str, limit: int = 512) -> str:
    value: str = _get(body, key, str)
    if len(value) > limit:
        raise ProtocolError("bad-frame", f"{key!r} too long")
    return value


def _trace(body: dict[Any, Any]) -> Trace:
    """The optional "tm" trace: at most MAX_ROUTE entries of four finite numbers, durations ≥ 0."""
    if "tm" not in body:
        return ()
    entries = _get(body, "tm", list)
    if len(entries) > MAX_ROUTE:
        raise ProtocolError("bad-frame", f"a trace lists at most {MAX_ROUTE} stages")
    trace = []
    for entry in entries:
        if not (
            isinstance(entry, list)
            and len(entry) == 4
            and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in entry)
            and min(entry[1:]) >= 0
        ):
            raise ProtocolError("bad-frame", "a trace entry is [arrived, queue, compute, hold], finite, durations >= 0")
        trace.append(StageTime(*(float(x) for x in entry)))
    return tuple(trace)


def _keys(body: dict[Any, Any], key: str) -> tuple[bytes, ...]:
    keys = _get(body, key, list)
    if len(keys) > MAX_PREFIX_BLOCKS or not all(isinstance(k, bytes) and len(k) == PREFIX_KEY_BYTES for k in keys):
        raise ProtocolError("bad-frame", f"{key!r}: at most {MAX_PREFIX_BLOCKS} block keys of {PREFIX_KEY_BYTES} bytes")
    return tuple(keys)


def _token_ids(value: Any, what: str) -> tuple[int, ...]:
    if not (
        isinstance(value, list)
        and len(value) <= MAX_TOKENS
        and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1 << 31 for i in value)
    ):
        raise ProtocolError("bad-frame", f"{what}: at most {MAX_TOKENS} non-negative token ids")
    return tuple(value)


def _constraint(value: Any) -> Constraint:
    if not isinstance(value, dict):
        raise ProtocolError("bad-frame", "'gr' is a map")
    grammar = _get(value, "g", str)
    if len(grammar.encode()) > MAX_GRAMMAR_BYTES:
        raise ProtocolError("too-large", f"a grammar of at most {MAX_GRAMMAR_BYTES} bytes")
    return Constraint(grammar, _index(value, "at"), _token_ids(_get(value, "ans", list), "'ans'"))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _logprobs(body: dict[Any, Any]) -> tuple[float, tuple[tuple[int, float], ...]]:
    """A sampled frame's log-probability (finite or -inf, never above 0) and its top pairs."""
    return _scored(body["lp"], _get(body, "top", list))


def _prompt_scores(value: Any) -> tuple[tuple[float, tuple[tuple[int, float], ...]], ...]:
    """A sampled frame's "pl": per prompt token, [log-probability, top pairs]."""
    if not isinstance(value, list) or len(value) > MAX_TOKENS:
        raise ProtocolError("bad-frame", f"'pl' lists at most {MAX_TOKENS} prompt tokens")
    if not all(isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list) for entry in value):
        raise ProtocolError("bad-frame", "'pl' entries are [log-probability, top pairs]")
    return tuple(_scored(logprob, top) for logprob, top in value)


def _scored(logprob: Any, top: list[Any]) -> tuple[float, tuple[tuple[int, float], ...]]:

    def valid(x: Any) -> bool:
        return bool((_finite(x) or x == -math.inf) and x <= 0)

    if not valid(logprob) or len(top) > MAX_TOP_LOGPROBS:
        raise ProtocolError("bad-frame", f"'lp' is a log-probability, 'top' at most {MAX_TOP_LOGPROBS} pairs")
    for pair in top:
        if not (isinstance(pair, list) and len(pair) == 2 and _token_ids(pair[:1], "'top'") and valid(pair[1])):
            raise ProtocolError("bad-frame", "'top' pairs are [token id, log-probability]")
    return float(logprob), tuple((int(t), float(lp)) for t, lp in top)


def _unpack(data: bytes) -> dict[Any, Any]:
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError("too-large", f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_FRAME_BYTES)
    except Exception as error:  # msgpack raises several unrelated types for garbage
        raise ProtocolError("bad-msgpack", f"not a msgpack frame: {type(error).__name__}") from None
    if not isinstance(body, dict):
        raise ProtocolError("bad-frame", "a frame is a map")
    return body


def encode_batch(frames: list[bytes]) -> bytes:
    """Encoded frames as one batch message (in order)."""
    packed: bytes = msgpack.packb({"t": "batch", "frames": frames}, use_bin_type=True)
    return packed


def decode_message(data: bytes) -> list[Frame]:
    """Parse a message, one frame or a batch of them, in order; ProtocolError on anything
    malformed (a batch inside a batch included)."""
    body = _unpack(data)
    if body.get("t") != "batch":
        return [_frame(body)]
    frames = _get(body, "frames", list)
    if not 1 <= len(frames) <= MAX_BATCH_FRAMES or not all(isinstance(f, bytes) for f in frames):
        raise ProtocolError("bad-frame", f"a batch holds 1..{MAX_BATCH_FRAMES} encoded frames")
    return [_frame(_unpack(frame)) for frame in frames]


def decode(data: bytes) -> Frame:
    """Parse and validate one frame; ProtocolError on anything malformed."""
    return _frame(_unpack(data))


def _frame(body: dict[Any, Any]) -> Frame:
    kind = body.get("t")
    if kind == "open":
        route = _get(body, "route", list)
        if not 1 <= len(route) <= MAX_ROUTE or not all(isinstance(u, str) and len(u) < 512 for u in route):
            raise ProtocolError("bad-frame", "route must list 1..64 stage URLs")
        hop = _index(body, "hop")
        if hop >= len(route):
            raise ProtocolError("bad-frame", "hop beyond the route")
        wire = _get(body, "wire", str)
        if wire not in WIRE_ITEMSIZE:
            raise ProtocolError("bad-dtype", f"wire dtype {wire!r} is not one of {sorted(WIRE_ITEMSIZE)}")
        try:
            sampling = SamplingParams(
                temperature=float(_get(body, "temp", (int, float))),
                top_k=_index(body, "top_k"),
                top_p=float(_get(body, "top_p", (int, float))),
                seed=_index(body, "seed"),
                logprobs=_get(body, "lp", int) if "lp" in body else -1,
                constraint=_constraint(body["gr"]) if "gr" in body else None,
                prompt_logprobs=_get(body, "plp", int) if "plp" in body else -1,
                scored=_token_ids(_get(body, "sc", list), "'sc'") if "plp" in body else (),
            )
        except ValueError:
            raise ProtocolError("bad-frame", "bad sampling parameters") from None
        if not math.isfinite(sampling.temperature):
            raise ProtocolError("bad-frame", "temperature must be finite")
        return Open(
            session=_session(body),
            route=tuple(route),
            hop=hop,
            origin=_text(body, "origin"),
            layout_id=_text(body, "layout", 128),
            sampling=sampling,
            wire_dtype=wire,
            prefix=_keys(body, "pre") if "pre" in body else None,
        )
    if kind == "reused":
        return Reused(_session(body), _index(body, "n"))
    if kind == "input":
        ids = _get(body, "ids", list)
        if not 1 <= len(ids) <= MAX_TOKENS:
            raise ProtocolError("bad-frame", f"1..{MAX_TOKENS} token ids per frame")
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1 << 31 for i in ids):
            raise ProtocolError("bad-frame", "token ids are non-negative integers")
        return InputIds(_session(body), _index(body, "pos"), tuple(ids))
    if kind == "hidden":
        dtype = _get(body, "dtype", str)
        if dtype not in WIRE_ITEMSIZE:
            raise ProtocolError("bad-dtype", f"dtype {dtype!r} is not one of {sorted(WIRE_ITEMSIZE)}")
        shape = _get(body, "shape", list)
        if len(shape) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
            raise ProtocolError("bad-shape", "shape is [tokens, hidden], both positive")
        data = _get(body, "data", bytes)
        expected = shape[0] * shape[1] * WIRE_ITEMSIZE[dtype]
        if len(data) != expected:
            raise ProtocolError("bad-shape", f"{len(data)} bytes for shape {shape} in {dtype} ({expected} expected)")
        return Hidden(_session(body), _index(body, "pos"), dtype, (shape[0], shape[1]), data, _trace(body))
    if kind == "sampled":
        logprob, top = _logprobs(body) if "lp" in body else (None, ())
        prompt = _prompt_scores(body["pl"]) if "pl" in body else ()
        return Sampled(_session(body), _index(body, "pos"), _index(body, "id"), _trace(body), logprob, top, prompt)
    if kind == "close":
        return Close(_session(body), _keys(body, "blk") if "blk" in body else ())
    if kind == "error":
        return Error(_session(body), _text(body, "code", 64), _text(body, "msg", 4096))
    raise ProtocolError("bad-frame", f"unknown frame type {kind!r}")
