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
- sampled: the token sampled for `position`, last stage to origin; with "lp", its log-probability
           under the model, and "top", the most likely tokens' [id, log-probability] pairs, when the
           Open's sampling asked for them ("lp": how many top entries, -1 none).
           An Open's "gr" constrains what the last stage samples: a grammar (llguidance's JSON
           form), the position where the answer begins, and the answer tokens a replay feeds as
           prompt (which the last stage's matcher consumes at open). An Open's "plp" (how many
           top entries) with "sc" (the prompt's ids) asks for the prompt's own log-probabilities:
           the last stage computes the head over every prompt row, and each sampled frame of the
           prompt carries "pl", [log-probability, top pairs] per prompt token its rows predict.
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

from .codec import decode, decode_message, encode, encode_batch
from .frames import (
    MAX_BATCH_FRAMES,
    MAX_FRAME_BYTES,
    MAX_GRAMMAR_BYTES,
    MAX_PREFIX_BLOCKS,
    MAX_ROUTE,
    MAX_TOKENS,
    MAX_TOP_LOGPROBS,
    PREFIX_BLOCK_TOKENS,
    PREFIX_KEY_BYTES,
    WIRE_ITEMSIZE,
    WIRE_VERSION,
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
    Scored,
    StageTime,
    Trace,
    WireDtype,
    block_hashes,
    prefix_seed,
)

__all__ = [
    "MAX_BATCH_FRAMES",
    "MAX_FRAME_BYTES",
    "MAX_GRAMMAR_BYTES",
    "MAX_PREFIX_BLOCKS",
    "MAX_ROUTE",
    "MAX_TOKENS",
    "MAX_TOP_LOGPROBS",
    "PREFIX_BLOCK_TOKENS",
    "PREFIX_KEY_BYTES",
    "WIRE_ITEMSIZE",
    "WIRE_VERSION",
    "Close",
    "Constraint",
    "Error",
    "Frame",
    "Hidden",
    "InputIds",
    "Open",
    "Reused",
    "Sampled",
    "SamplingParams",
    "Scored",
    "StageTime",
    "Trace",
    "WireDtype",
    "block_hashes",
    "decode",
    "decode_message",
    "encode",
    "encode_batch",
    "prefix_seed",
]
