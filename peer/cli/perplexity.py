"""`edgeshard perplexity`: a text's perplexity under a model file and weight form, scored as
llama.cpp's `llama-perplexity` scores it (model/perplexity.py), so a user can check a file and
a form against llama.cpp's numbers; `--json` adds every token's log-probability."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import PeerError
from ..model.options import DEFAULT_MODEL, KV_FORMS, WEIGHT_CHOICES, WEIGHTS_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edgeshard perplexity`."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="'default', a .gguf file, or a HF model directory")
    parser.add_argument("--text-file", required=True, help="the text to score (UTF-8)")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto", help=WEIGHTS_HELP)
    parser.add_argument("--stages", type=int, default=1, help="shards the units are split into (chained here)")
    parser.add_argument("--context", type=int, default=512, help="tokens per chunk (llama-perplexity's -c)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    parser.add_argument("--kv-cache", choices=KV_FORMS, default="float", help="KV cache: float or int8")
    parser.add_argument("--json", action="store_true", help="one JSON object: perplexity and every token's logprob")


def main(args: argparse.Namespace) -> int:
    """Run `edgeshard perplexity`."""
    from ..model.devices import pick_device, resolve_form
    from ..model.files import open_model
    from ..model.perplexity import chunk_starts, perplexity
    from ..model.shard import Shard, even_split, unit_count

    try:
        text = Path(args.text_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PeerError(f"cannot read {args.text_file}: {error}") from error
    source = open_model(args.model)
    tokenizer = source.tokenizer()
    device = pick_device(args.device)
    try:
        form = resolve_form(args.weights, device)
    except ValueError as error:
        raise PeerError(str(error)) from error
    ids = list(tokenizer.encode(text))
    try:  # before any stage loads: a text shorter than one chunk is the user's to fix
        chunks = chunk_starts(len(ids), args.context)
    except ValueError as error:
        raise PeerError(str(error)) from error
    if not chunks:
        raise PeerError(f"the text has {len(ids)} tokens: fewer than one chunk of {args.context} (try --context)")
    ranges = even_split(unit_count(source.config), args.stages)
    settings = {"weights": form, "max_sessions": 1, "max_context": args.context, "kv_cache": args.kv_cache}
    shards = [Shard(source, a, b, device, **settings) for a, b in ranges]
    # llama-perplexity puts BOS first in every chunk when the vocabulary adds one.
    bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
    started = time.perf_counter()
    scored = perplexity(shards, ids, args.context, bos)
    seconds = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "perplexity": scored.perplexity,
                    "weights": form,
                    "context": scored.context,
                    "chunks": scored.chunks,
                    "scored": scored.scored,
                    "seconds": round(seconds, 2),
                    "token_ids": scored.token_ids,
                    "logprobs": scored.logprobs,
                }
            )
        )
    else:
        print(
            f"perplexity {scored.perplexity:.4f} over {scored.scored} tokens "
            f"({scored.chunks} chunks of {scored.context}, {form}, {seconds:.1f} s)",
            file=sys.stdout,
        )
    return 0
