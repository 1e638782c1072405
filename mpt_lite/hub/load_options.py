"""Keyword arguments of from_pretrained that are not MPT config fields: transformers' spellings that
mpt_lite honours (torch_dtype), refuses with the spelling it wants (load_in_4bit ...), or drops
(trust_remote_code), and a warning for any other name, which is kept on the config as given (a hub
config may carry fields of its own) but is most often a misspelt option."""
from __future__ import annotations

import difflib
import os
import sys
import warnings
from typing import Any

import torch

from ..config import ALIASES, DEFAULTS

LOADING_OPTIONS = ("bits", "quant_type", "dtype", "device", "embedding_bits", "group_size")
CONFIG_EXTRAS = ("attn_config", "num_labels", "id2label", "label2id", "problem_type", "model_type")
DROPPED = ("trust_remote_code",)  # no remote code runs here: the MPT classes are built in
BITSANDBYTES_STYLE = {"load_in_8bit": "bits=8", "load_in_4bit": "bits=4", "quantization_config": "bits=4 or bits=8",
                      "bnb_4bit_quant_type": "quant_type=\"nf4\""}
DTYPE_NAMES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
               "float16": torch.float16, "half": torch.float16}


def _dtype_named(value: Any, what: str) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in DTYPE_NAMES:
        return DTYPE_NAMES[value.removeprefix("torch.")]
    raise TypeError(f"{what} must be a torch.dtype, 'auto' or one of {', '.join(DTYPE_NAMES)}; got {value!r}")


def take_torch_dtype(dtype: torch.dtype, overrides: dict) -> tuple[torch.dtype, Any]:
    """transformers' torch_dtype as dtype: it replaces the default float32; a dtype given as something else
    that differs is a conflict. Returns (dtype, "auto" or None); "auto" is resolved from the checkpoint's
    config by dtype_from_config once it is read."""
    if "torch_dtype" not in overrides:
        return dtype, None
    value = overrides.pop("torch_dtype")
    if value is None:
        return dtype, None
    if value == "auto":
        return dtype, "auto"
    wanted = _dtype_named(value, "torch_dtype")
    if dtype != torch.float32 and dtype != wanted:
        raise ValueError(f"both dtype={dtype} and torch_dtype={value!r} were given; pass one (dtype is mpt_lite's name)")
    return wanted, None


def dtype_from_config(config: Any) -> torch.dtype:
    """torch_dtype="auto": the dtype the checkpoint says it was saved in (config.json's torch_dtype),
    float32 when it says none."""
    stored = getattr(config, "torch_dtype", None)
    if stored is None:
        return torch.float32
    return _dtype_named(stored, "the checkpoint's torch_dtype")


def check_overrides(overrides: dict) -> None:
    """Drops no-op transformers options, refuses bitsandbytes-style ones, warns about unknown names."""
    for name in DROPPED:
        overrides.pop(name, None)
    for name, ours in BITSANDBYTES_STYLE.items():
        if name in overrides:
            raise TypeError(f"{name} is bitsandbytes' option through transformers; mpt_lite quantizes while loading "
                            f"with {ours} (see from_pretrained's bits, quant_type and embedding_bits)")
    known = set(DEFAULTS) | set(ALIASES) | set(CONFIG_EXTRAS)
    for name in overrides:
        if name in known:
            continue
        close = difflib.get_close_matches(name, [*LOADING_OPTIONS, *known], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warnings.warn(f"from_pretrained: {name!r} is neither an MPT config field nor a loading option; it is kept on "
                      f"the config as given{hint}", UserWarning, stacklevel=_caller_level())


def _caller_level() -> int:
    """warnings.warn's stacklevel for the first frame outside mpt_lite (load() or from_pretrained's caller), so the
    warning names the user's line, whichever entry point was called."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1  # frame 1: the function that calls warnings.warn
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level
