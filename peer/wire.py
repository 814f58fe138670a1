"""The stage-to-stage wire format: typed frames ⇄ msgpack bytes (sans-I/O: no sockets, no torch).

Every frame is one msgpack map with a type tag "t" and short keys. Hidden states travel as raw
little-endian bytes with their dtype and shape beside them (`pipeline.hidden` converts tensors);
decoding keeps the received bytes as they are until a stage needs them.

Frames (the session id "s" is a short string chosen by the origin):
- open:    start a session along a route: route (stage URLs), hop (this receiver's index), origin
           (URL for the sampled tokens), the layout id the route belongs to, sampling parameters;
           and, when the origin asks for prefix reuse, "pre": the keys of the prompt's leading
           blocks that every stage so far holds (each stage cuts it to what it holds itself).
- reused:  the last stage's answer to an open that asked: how many blocks every stage holds.
- input:   token ids into stage 0 at positions [position, position + n).
- hidden:  hidden states [n, H] at positions [position, position + n), stage to stage.
- sampled: the token sampled for `position`, last stage to origin.
  Hidden and sampled frames may carry "tm", the step's trace: one `StageTime` per stage passed
  so far (arrival wall clock, queue, compute, hold), which the origin turns into where each
  token's time went.
- close:   forget the session (forwarded along the route); "blk": the keys of the blocks it fed,
           for the stages to keep in their prefix caches.
- error:   something about a session (or the link) went wrong; code + message.
A message is one frame, or a batch: {"t": "batch", "frames": [encoded frame, ...]}. The outputs
of one pass for one receiver travel as one batch, so the sessions computed together arrive
together and stay in one pass at the next stage (`decode_message` reads either).
`decode` validates structure, types and sizes and raises ProtocolError; a stage answers that with
an error frame and keeps serving.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

from .errors import ProtocolError

# 2: frames "input"/"sampled", Open carries "layout"; 3: batch messages; 4: prefix reuse (Open's
# "pre", Close's "blk", the "reused" frame). Peers of another version never share a plan.
WIRE_VERSION = 4
MAX_FRAME_BYTES = 64 * 2**20
MAX_TOKENS = 1 << 16
MAX_ROUTE = 64
MAX_BATCH_FRAMES = 1024
WireDtype = Literal["float32", "float16", "bfloat16"]
WIRE_ITEMSIZE: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2}
PREFIX_BLOCK_TOKENS = 16  # positions per prefix-cache block (vLLM's default block size)
MAX_PREFIX_BLOCKS = MAX_TOKENS // PREFIX_BLOCK_TOKENS
PREFIX_KEY_BYTES = 16


def prefix_seed(layout_id: str, wire_dtype: str) -> bytes:
    """The start of every key chain: a block's KV depends on the stages before it (the layout)
    and on how hidden states crossed the wire, so either change starts a new chain."""
    return hashlib.blake2b(f"{layout_id}\0{wire_dtype}".encode(), digest_size=PREFIX_KEY_BYTES).digest()


def block_hashes(seed: bytes, tokens: Sequence[int]) -> list[bytes]:
    """The key of every whole block of `tokens`: a hash of the previous block's key and this
    block's tokens, so a key names the whole prefix up to its block's end."""
    keys, key = [], seed
    for start in range(0, len(tokens) - PREFIX_BLOCK_TOKENS + 1, PREFIX_BLOCK_TOKENS):
        block = b"".join(t.to_bytes(4, "little") for t in tokens[start : start + PREFIX_BLOCK_TOKENS])
        key = hashlib.blake2b(key + block, digest_size=PREFIX_KEY_BYTES).digest()
        keys.append(key)
    return keys


@dataclass(frozen=True)
class SamplingParams:
    """How the last stage picks the next token (carried by `Open`). temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and self.top_k >= 0 and 0 < self.top_p <= 1):
            raise ValueError(f"bad sampling parameters {self}")


@dataclass(frozen=True)
class StageTime:
    """What one step did at one stage: when it arrived (wall clock, seconds since the epoch: only
    differences with other hosts' clocks are taken), how long it waited for a pass, how long the
    pass computed, and how long it was held in all (queue + compute + sampling/copy/encoding)."""

    arrived: float
    queue_s: float
    compute_s: float
    hold_s: float


Trace = tuple[StageTime, ...]


@dataclass(frozen=True)
class Open:
    """Start (or restart from position 0) a session along a route."""

    session: str
    route: tuple[str, ...]
    hop: int
    origin: str
    layout_id: str  # the layout the route belongs to: a stage serving another one refuses it
    sampling: SamplingParams
    wire_dtype: WireDtype = "float32"
    prefix: tuple[bytes, ...] | None = None  # None: no reuse asked (and no `Reused` answer)


@dataclass(frozen=True)
class Reused:
    """The last stage's answer to an `Open` that asked for prefix reuse: every stage holds the
    session's first `blocks` blocks; the origin feeds from position blocks × PREFIX_BLOCK_TOKENS."""

    session: str
    blocks: int


@dataclass(frozen=True)
class InputIds:
    """Token ids into stage 0."""

    session: str
    position: int
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Hidden:
    """Hidden states between stages; `data` is raw bytes of `shape` in `dtype`."""

    session: str
    position: int
    dtype: WireDtype
    shape: tuple[int, int]
    data: bytes | memoryview
    trace: Trace = ()


@dataclass(frozen=True)
class Sampled:
    """The token sampled for `position`, last stage to origin."""

    session: str
    position: int
    token_id: int
    trace: Trace = ()


@dataclass(frozen=True)
class Close:
    """Forget a session; `blocks`: the keys of the blocks it fed, to keep for reuse."""

    session: str
    blocks: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Error:
    """A failure report; `session` is empty when it concerns the link itself."""

    session: str
    code: str
    message: str


Frame = Open | Reused | InputIds | Hidden | Sampled | Close | Error


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
        return Sampled(_session(body), _index(body, "pos"), _index(body, "id"), _trace(body))
    if kind == "close":
        return Close(_session(body), _keys(body, "blk") if "blk" in body else ())
    if kind == "error":
        return Error(_session(body), _text(body, "code", 64), _text(body, "msg", 4096))
    raise ProtocolError("bad-frame", f"unknown frame type {kind!r}")
