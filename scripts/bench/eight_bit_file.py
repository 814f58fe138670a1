"""The 8-bit half of issue 12's memory goal ("resident weight memory within 1.3× of the GGUF
file's bytes for 4- and 8-bit files"), measured on an 8-bit file made here: there is no 8-bit
GGUF of the default model on this machine (and no network to fetch one).

  python scripts/bench/eight_bit_file.py [--out DIR] [--tokens 32]

1. Writes the embedded SmolLM2-135M Q4_1 file again with every 2-D tensor as Q8_0 (llama.cpp's
   8-bit type: blocks of 32 int8 values with an f16 scale) and the 1-D tensors (norms) F32,
   every metadata field copied as gguf's own gguf_new_metadata.py copies them (the GGUF.*
   bookkeeping and general.architecture come from the writer), except general.file_type, which
   says MOSTLY_Q8_0. A tensor already Q8_0 in the source (the token embedding) is copied byte
   for byte; the Q4_1 ones are dequantized and re-quantized, so the new file holds the Q4_1
   model's values at 8 bits (the same model, not a better one). The file is read back with
   GGUFReader and opened with `open_model` (its config must equal the source's); the error of
   the Q8_0 values, and of the int8 form's one-scale-per-row copy of them, is printed.
2. Holds the whole model as one Shard from that file in int8, int4 and float32, and prints each
   form's `weight_bytes()` against the file's size.
3. Greedy-decodes TOKENS tokens of 2 chat prompts with float32 from the original Q4_1 file, and
   compares each form with them: identical prefix, identical positions, and teacher-forced top-1
   (the form fed the reference tokens; what forms.py measures, on far fewer steps here).

Converted parts (tokenizer, compact tensors) go to a temporary cache directory, not $EDGESHARD_CACHE.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from edgeshard.peer.model.files import GGUFModel, default_model_path, open_model
from edgeshard.peer.model.options import WeightForm
from edgeshard.peer.model.shard import Shard, unit_count
from edgeshard.peer.model.text import prompt_ids
from edgeshard.peer.model.weights import quantize_int8
from forms import teacher_forced  # this folder is on the path: the script's own
from gpu_greedy import ours

MESSAGES = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a bicycle stays upright while it moves.",
]
Q8_0 = gguf.GGMLQuantizationType.Q8_0
F32 = gguf.GGMLQuantizationType.F32
FILE_TYPE = "general.file_type"
MB = 2**20


# --- 1. the Q8_0 file ----------------------------------------------------------------------


def copy_fields(reader: Any, writer: Any) -> int:
    """Every key/value field of `reader` into `writer`, as gguf_new_metadata.py copies them;
    general.file_type set to MOSTLY_Q8_0. Returns the number of fields written."""
    written = 0
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # the writer adds these itself
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = int(gguf.LlamaFileType.MOSTLY_Q8_0) if field.name == FILE_TYPE else field.contents()
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)
        written += 1
    return written


def write_q8_0(source: Path, target: Path) -> dict[str, int]:
    """`source` as a Q8_0 GGUF at `target`. Returns counts of the tensors by how they were written."""
    reader = gguf.GGUFReader(str(source))
    architecture = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(target), arch=str(architecture))
    counts = {"fields": copy_fields(reader, writer), "copied Q8_0": 0, "requantized Q8_0": 0, "F32": 0}
    for tensor in reader.tensors:
        if tensor.tensor_type == Q8_0:  # already 8-bit: the same bytes
            writer.add_tensor(tensor.name, np.array(tensor.data), raw_dtype=Q8_0)
            counts["copied Q8_0"] += 1
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if values.ndim == 1:  # norms stay float32
            writer.add_tensor(tensor.name, values)
            counts["F32"] += 1
        else:  # [rows, columns] floats -> [rows, columns / 32 * 34] bytes
            writer.add_tensor(tensor.name, gguf.quants.quantize(values, Q8_0), raw_dtype=Q8_0)
            counts["requantized Q8_0"] += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


def check_file(source: Path, target: Path, cache_root: Path) -> list[str]:
    """The written file read back: its fields and tensors against the source's; open_model's
    config against the source's. Returns lines to print; raises on a mismatch."""
    old, new = gguf.GGUFReader(str(source)), gguf.GGUFReader(str(target))
    keys = [k for k in old.fields if not k.startswith("GGUF.")]
    missing = [k for k in keys if k not in new.fields]
    assert not missing, f"fields missing from the Q8_0 file: {missing}"
    changed = [k for k in keys if k != FILE_TYPE and new.fields[k].contents() != old.fields[k].contents()]
    assert not changed, f"fields changed in the Q8_0 file: {changed}"
    assert len(new.tensors) == len(old.tensors), (len(new.tensors), len(old.tensors))
    worst = 0.0
    squares = {"file": 0.0, "rows": 0.0, "weights": 0.0}  # sums of squared errors, and of the weights
    for a, b in zip(old.tensors, new.tensors, strict=True):
        assert a.name == b.name and list(a.shape) == list(b.shape), (a.name, b.name, a.shape, b.shape)
        assert b.tensor_type == (Q8_0 if len(a.shape) > 1 else F32), (b.name, b.tensor_type)
        if len(a.shape) > 1:
            x = gguf.quants.dequantize(a.data, a.tensor_type)
            y = gguf.quants.dequantize(b.data, b.tensor_type)
            # relative to each block of 32's largest magnitude: Q8_0 rounds to half a step of 1/127
            blocks = np.abs(x).reshape(-1, 32).max(axis=1, keepdims=True) + 1e-12
            worst = max(worst, float((np.abs(x - y).reshape(-1, 32) / blocks).max()))
            # what the int8 form holds of these values: one scale per row (the tied head's too)
            rows = quantize_int8(torch.from_numpy(np.array(y, dtype=np.float32))).dequantize().numpy()
            squares["file"] += float(np.square(y - x, dtype=np.float64).sum())
            squares["rows"] += float(np.square(rows - y, dtype=np.float64).sum())
            squares["weights"] += float(np.square(x, dtype=np.float64).sum())
    config = open_model(str(target), cache_root).config
    expected = GGUFModel(source, cache_root).config
    assert config.to_dict() == expected.to_dict(), "the Q8_0 file's config differs from the source's"
    q8, f32 = (sum(t.tensor_type == kind for t in new.tensors) for kind in (Q8_0, F32))
    return [
        f"read back: {len(new.fields)} fields ({len(keys)} of the source's, {FILE_TYPE} "
        f"{old.fields[FILE_TYPE].contents()} -> {new.fields[FILE_TYPE].contents()}), {len(new.tensors)} tensors "
        f"({q8} Q8_0, {f32} F32)",
        f"largest Q8_0 error against the source's values: {worst:.4f} of the block's largest magnitude "
        "(at most 1/254 = 0.0039 plus the f16 scale's rounding)",
        "relative RMS error of the 2-D weights: Q8_0 file vs the Q4_1 values "
        f"{(squares['file'] / squares['weights']) ** 0.5:.2e}; int8 form's one scale per row vs the Q8_0 values "
        f"{(squares['rows'] / squares['weights']) ** 0.5:.2e}",
        "open_model(Q8_0 file).config == the source's config: yes",
    ]


# --- 2. memory, 3. greedy tokens -----------------------------------------------------------


@dataclass
class Held:
    file: str
    file_bytes: int
    form: WeightForm
    held_bytes: int
    parts: dict[str, int]
    tokens: list[list[int]]
    forced: int  # teacher-forced steps whose argmax is the reference's token
    seconds: float


def parts(shard: Shard) -> dict[str, int]:
    """Bytes of the decoder layers, the embedding table, and the rest (head, final norm, rotary
    table), storage shared with an earlier part counted there once, as `weight_bytes` does (a
    one-stage int4 head shares the table's int8 rows)."""
    seen: set[int] = set()

    def size(tensors: list[torch.Tensor]) -> int:
        total = 0
        for tensor in tensors:
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
        return total

    layers = size([*shard.layers.parameters(), *shard.layers.buffers()])
    table = size(shard.embedding.tensors() if shard.embedding is not None else [])
    return {"layers": layers, "embedding": table, "head+rest": shard.weight_bytes() - layers - table}


def hold(
    path: Path, cache_root: Path, form: WeightForm, prompts: list[list[int]], tokens: int, reference: list[list[int]]
) -> Held:
    """The whole model from `path` as one shard in `form`: its bytes, its greedy tokens, and its
    teacher-forced top-1 hits on `reference` (none yet: the reference is this shard's tokens)."""
    started = time.perf_counter()
    source = GGUFModel(path, cache_root)
    shard = Shard(source, 0, unit_count(source.config), weights=form)
    held = Held(path.name, path.stat().st_size, form, shard.weight_bytes(), parts(shard), [], 0, 0.0)
    held.tokens = [ours(shard, ids, tokens) for ids in prompts]
    want = reference or held.tokens
    forced = teacher_forced(shard, [ids + r for ids, r in zip(prompts, want, strict=True)], [len(p) for p in prompts])
    held.forced = sum(
        int(row.argmax()) == token
        for rows, r in zip(forced, want, strict=True)
        for row, token in zip(rows, r, strict=True)
    )
    held.seconds = time.perf_counter() - started
    print(f"{form} from {path.name}: {held.seconds:.1f} s", file=sys.stderr)
    return held


def agreement(reference: list[list[int]], got: list[list[int]]) -> tuple[int, int, int]:
    """(tokens identical until each prompt's first divergence, summed; identical positions; all)."""
    prefix = same = total = 0
    for want, have in zip(reference, got, strict=True):
        diverged = next((i for i, (a, b) in enumerate(zip(want, have, strict=True)) if a != b), len(want))
        prefix += diverged
        same += sum(a == b for a, b in zip(want, have, strict=True))
        total += len(want)
    return prefix, same, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, help="folder for the Q8_0 file (default: a temporary one, removed)")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt (default 32)")
    args = parser.parse_args()
    started = time.perf_counter()
    original = default_model_path()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        cache_root = Path(scratch) / "cache"
        target = out / original.name.replace(".Q4_1.", ".Q8_0.")
        counts = write_q8_0(original, target)
        seconds = time.perf_counter() - started
        print(f"wrote {target} ({target.stat().st_size / MB:.1f} MB) in {seconds:.1f} s: {counts}")
        for line in check_file(original, target, cache_root):
            print(line)

        tokenizer = GGUFModel(original, cache_root).tokenizer()
        prompts = [prompt_ids(tokenizer, None, message) for message in MESSAGES]
        rows = [hold(original, cache_root, "float32", prompts, args.tokens, [])]
        reference = rows[0].tokens
        rows += [hold(original, cache_root, "int4", prompts, args.tokens, reference)]
        forms: list[WeightForm] = ["int8", "int4", "float32"]
        rows += [hold(target, cache_root, form, prompts, args.tokens, reference) for form in forms]

    print(f"\n## Greedy tokens against float32 from {original.name} ({len(MESSAGES)} chat prompts × {args.tokens})\n")
    print("| file | form | identical until first divergence | identical positions | teacher-forced top-1 |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        prefix, same, total = agreement(reference, row.tokens)
        print(
            f"| {row.file} | {row.form} | {prefix}/{total} | {same}/{total} ({same / total:.0%}) "
            f"| {row.forced}/{total} ({row.forced / total:.0%}) |"
        )
    print("(free-running greedy tokens part at the first near-tie that flips; teacher-forced steps stay aligned)")

    print("\n## Resident weights of the whole model as one shard, against the file\n")
    print("| file | file MB | form | held MB | held/file | layers / embedding / head+rest MB |")
    print("|---|---:|---|---:|---:|---|")
    for row in rows:
        split = " / ".join(f"{value / MB:.1f}" for value in row.parts.values())
        print(
            f"| {row.file} | {row.file_bytes / MB:.1f} | {row.form} | {row.held_bytes / MB:.1f} "
            f"| {row.held_bytes / row.file_bytes:.2f}× | {split} |"
        )
    eight = next(row for row in rows if row.form == "int8")
    print(
        "\ngoal: resident weight memory within 1.3× of the GGUF file's bytes, 8-bit file: "
        f"{'met' if eight.held_bytes <= 1.3 * eight.file_bytes else 'not met'} "
        f"(int8 holds {eight.held_bytes / MB:.1f} MB, {eight.held_bytes / eight.file_bytes:.2f}× "
        f"the Q8_0 file's {eight.file_bytes / MB:.1f} MB)"
    )
    print(f"\nMB = 2^20 bytes; total {time.perf_counter() - started:.0f} s ({torch.get_num_threads()} torch threads)")


if __name__ == "__main__":
    main()
