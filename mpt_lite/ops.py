"""The only Python module that calls the C++ extension (mpt_lite._C).

Each op checks its tensors (dtype, device, shape, contiguity) and raises a clear error, then
hands raw pointers and sizes to _C. Beside each op sits ``ref_<op>``: the plain-torch reference
that mirrors exactly what the kernel computes; tests compare every kernel variant against it."""
from __future__ import annotations

import os
from typing import Sequence

import torch

try:
    from . import _C
except ImportError as e:  # pragma: no cover - a broken or missing build
    raise ImportError(
        f"mpt_lite's C++ extension is not built ({e}); run `make setup` (or "
        "`python setup.py build_ext --inplace`) in the source tree"
    ) from None


# ---- CPU features, kernel variants, threads ----

def cpu_features() -> dict:
    return dict(_C.cpu_features())


def supported_isas() -> list[str]:
    return list(_C.supported_isas())


def current_isa() -> str:
    return _C.current_isa()


def set_isa(name: str) -> None:
    """Selects the kernel variant ("generic", "avx2", "avx512"); ValueError if the CPU lacks it."""
    _C.set_isa(name)


class use_isa:
    """Context manager: run kernels with one variant, then restore the previous one."""

    def __init__(self, name: str) -> None:
        self.name, self.prev = name, None

    def __enter__(self) -> "use_isa":
        self.prev = current_isa()
        set_isa(self.name)
        return self

    def __exit__(self, *exc) -> None:
        set_isa(self.prev)


def num_threads() -> int:
    return _C.num_threads()


def set_num_threads(n: int) -> None:
    _C.set_num_threads(int(n))


# ---- tensor checks shared by the ops ----

def check_tensor(name: str, t: object, dtypes: Sequence[torch.dtype], ndim: int | None = None,
                 device: str = "cpu") -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.device.type != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")
    return t


def ptr(t: torch.Tensor) -> int:
    """The address of a contiguous tensor's first element, for _C."""
    if not t.is_contiguous():
        raise ValueError("internal error: a non-contiguous tensor reached a kernel")
    return t.data_ptr()


# ---- quantized matmuls (int8, nf4, int4) ----


# ---- paged KV cache and attention ----
