"""Our numbers against llama.cpp's on the same GGUF file and the same tokens.

  python scripts/bench/accuracy.py [--types q4_1,q4_0,q4_k_m,q5_k_m,q6_k,q8_0] [--forms int4,int8,float32]
                                   [--text FILE] [--context 512] [--chunks 4] [--work DIR]

Files: the embedded SmolLM2-135M file as shipped (Q4_1 layers, Q8_0 embedding), and the same
model written as F16 with gguf's writer (every metadata field copied) and quantized by llama.cpp's
own `llama_model_quantize` to each other type (llama.cpp falls back to Q5_0/Q8_0 for matrices
whose 576 columns are not a multiple of a K-quant's 256: it says so as it quantizes). The text
(default: the GPL-3 text Debian ships) is tokenized once by our tokenizer; both engines get the
same ids, chunk by chunk as llama-perplexity cuts them (model/perplexity.py), llama.cpp through
llama-cpp-python with every position's logits (`logits_all`). Per file and form, over every
scored position (CHUNKS × (CONTEXT/2 − 1), ≥ 1000 by default): both perplexities and their
ratio, top-1 agreement, and the mean KL divergence of our next-token distribution from
llama.cpp's, KL(llama.cpp ‖ ours).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from edgeshard.peer.model.files import default_model_path, open_model
from edgeshard.peer.model.perplexity import chunk_logits, chunk_starts
from edgeshard.peer.model.shard import Shard, even_split, unit_count

QUANTS = {"q4_0": 2, "q4_1": 3, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}  # llama_ftype
F16 = gguf.GGMLQuantizationType.F16
F32 = gguf.GGMLQuantizationType.F32


def write_f16(source: Path, target: Path) -> None:
    """`source` with its matrices as F16 (norms F32), every metadata field copied."""
    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(target), arch=str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents()))
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = int(gguf.LlamaFileType.MOSTLY_F16) if field.name == "general.file_type" else field.contents()
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        writer.add_tensor(tensor.name, values.astype(np.float16 if values.ndim == 2 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def files(work: Path, types: list[str]) -> dict[str, Path]:
    """The benchmark's files by type name, made in `work` when missing."""
    import llama_cpp

    work.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    f16 = work / "smollm2-135m-f16.gguf"
    for kind in types:
        if kind == "q4_1":  # the file as shipped
            made[kind] = default_model_path()
            continue
        target = work / f"smollm2-135m-{kind}.gguf"
        if not target.exists():
            if not f16.exists():
                write_f16(default_model_path(), f16)
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = QUANTS[kind]
            params.nthread = torch.get_num_threads()
            if llama_cpp.llama_model_quantize(str(f16).encode(), str(target).encode(), params) != 0:
                raise RuntimeError(f"llama_model_quantize {kind} failed")
        made[kind] = target
    return made


def chunks(ids: list[int], context: int, count: int, bos: int | None) -> list[list[int]]:
    """The first `count` chunks as llama-perplexity feeds them (BOS first when the model has one)."""
    starts = chunk_starts(len(ids), context)[:count]
    if len(starts) < count:
        raise SystemExit(f"the text has {len(ids)} tokens: fewer than {count} chunks of {context}")
    return [([bos] if bos is not None else ids[s : s + 1]) + ids[s + 1 : s + context] for s in starts]


def llama_logits(path: Path, fed: list[list[int]], context: int) -> list[torch.Tensor]:
    """llama.cpp's logits [T, V] of every position of each chunk, each from an empty cache."""
    import llama_cpp

    llm = llama_cpp.Llama(
        str(path), n_ctx=context, n_batch=context, logits_all=True, n_threads=torch.get_num_threads(), verbose=False
    )
    out = []
    for chunk in fed:
        llm.reset()
        llm.eval(chunk)
        out.append(torch.from_numpy(np.array(llm.scores[: len(chunk)], dtype=np.float32)))
    return out


def ours_logits(path: Path, form: str, fed: list[list[int]], context: int, cache: Path) -> list[torch.Tensor]:
    source = open_model(str(path), cache)
    shards = [
        Shard(source, a, b, weights=form, max_sessions=1, max_context=context)  # type: ignore[arg-type]
        for a, b in even_split(unit_count(source.config), 1)
    ]
    return [chunk_logits(shards, chunk, f"accuracy-{i}") for i, chunk in enumerate(fed)]


def compare(ours: list[torch.Tensor], theirs: list[torch.Tensor], fed: list[list[int]], context: int) -> dict[str, Any]:
    """Perplexities, top-1 agreement and mean KL(theirs ‖ ours) over the scored positions."""
    first = context // 2
    nll_ours = nll_theirs = kl = 0.0
    agree = scored = 0
    for mine, reference, chunk in zip(ours, theirs, fed, strict=True):
        targets = torch.tensor(chunk[first + 1 :])
        p = torch.log_softmax(mine[first : context - 1].double(), dim=-1)
        q = torch.log_softmax(reference[first : context - 1].double(), dim=-1)
        nll_ours -= float(p.gather(-1, targets[:, None]).sum())
        nll_theirs -= float(q.gather(-1, targets[:, None]).sum())
        kl += float((q.exp() * (q - p)).sum())
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        scored += len(targets)
    return {
        "ours": math.exp(nll_ours / scored),
        "llama.cpp": math.exp(nll_theirs / scored),
        "top1": agree / scored,
        "kl": kl / scored,
        "positions": scored,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", default="q4_1,q4_0,q4_k_m,q5_k_m,q6_k,q8_0")
    parser.add_argument("--forms", default="int4,int8,float32")
    parser.add_argument("--text", type=Path, default=Path("/usr/share/common-licenses/GPL-3"))
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeshard-bench-accuracy")
    args = parser.parse_args()
    made = files(args.work, args.types.split(","))
    tokenizer = open_model("default").tokenizer()  # every file here has the embedded vocabulary
    ids = list(tokenizer.encode(args.text.read_text(encoding="utf-8")))
    bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
    fed = chunks(ids, args.context, args.chunks, bos)
    print("| file | form | perplexity, ours | llama.cpp | ours / llama.cpp | top-1 agreement | mean KL | positions |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="edgeshard-accuracy-") as cache:
        for kind, path in made.items():
            theirs = llama_logits(path, fed, args.context)
            for form in args.forms.split(","):
                row = compare(ours_logits(path, form, fed, args.context, Path(cache)), theirs, fed, args.context)
                print(
                    f"| {kind} | {form} | {row['ours']:.4f} | {row['llama.cpp']:.4f} | "
                    f"{row['ours'] / row['llama.cpp']:.4f} | {row['top1']:.3f} | {row['kl']:.5f} "
                    f"| {row['positions']} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
