"""The frames of the stage-to-stage wire, their bounds, and the prefix-cache keys (sans-I/O).

The package's docstring (`peer.wire`) describes each frame's keys."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

# 2: frames "input"/"sampled", Open carries "layout"; 3: batch messages; 4: prefix reuse (Open's
# "pre", Close's "blk", the "reused" frame); 5: log-probabilities ("lp", "top") and grammars
# ("gr"); 6: the prompt's own log-probabilities (Open's "plp" and "sc", Sampled's "pl"). Peers
# of another version never share a plan.
WIRE_VERSION = 6
MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs
MAX_GRAMMAR_BYTES = 1 << 20
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
    logprobs: int = -1  # -1: none; n >= 0: each token's log-probability and the n most likely
    constraint: Constraint | None = None  # structured output: what the answer must match
    prompt_logprobs: int = -1  # as `logprobs`, for every prompt token after the first (scoring)
    scored: tuple[int, ...] = ()  # with prompt_logprobs: the prompt, whose tokens the last stage scores

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and self.top_k >= 0 and 0 < self.top_p <= 1):
            raise ValueError(f"bad sampling parameters {self}")
        if not (-1 <= self.logprobs <= MAX_TOP_LOGPROBS and -1 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS):
            raise ValueError(f"logprobs: -1..{MAX_TOP_LOGPROBS}")


@dataclass(frozen=True)
class Constraint:
    """A grammar the answer must match, sampled under its token masks on the last stage.
    `start`: the position of the answer's first token in this session; `answered`: the answer's
    tokens already produced (a fail-over replays them as prompt, ending at `start`), which the
    matcher consumes before its first mask."""

    grammar: str  # llguidance's grammar (its JSON form, e.g. from a JSON schema)
    start: int = 0
    answered: tuple[int, ...] = ()


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
Scored = tuple[float, tuple[tuple[int, float], ...]]  # a token's log-probability, the top pairs


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
    logprob: float | None = None  # asked for: the token's log-probability under the model
    top: tuple[tuple[int, float], ...] = ()  # asked for: the most likely tokens, best first
    # prompt_logprobs asked for: the (log-probability, top) of each prompt token the step's rows
    # predict (positions step.position + 1 on, up to the prompt's end)
    prompt: tuple[Scored, ...] = ()


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
