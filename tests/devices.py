"""Kernel-test variants: the CPU ISA variants plus "cuda", which runs only where torch sees a GPU
and mpt_lite._C holds the CUDA kernels (otherwise it is skipped with the reason)."""
import contextlib

import pytest
import torch

from mpt_lite import ops


def _cuda_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch: the CUDA kernels are compile-checked only here"
    if not ops.cuda_built():
        return "mpt_lite._C was built without CUDA (MPT_LITE_CUDA=on)"
    return None


CUDA_SKIP = _cuda_skip_reason()
needs_cuda = pytest.mark.skipif(CUDA_SKIP is not None, reason=CUDA_SKIP or "")
CUDA = pytest.param("cuda", marks=needs_cuda)
DEVICES = ["cpu", CUDA]


def variants(isas):
    """Every ISA variant (on the CPU) and "cuda"."""
    return [*isas, CUDA]


def device_of(variant: str) -> str:
    return "cuda" if variant == "cuda" else "cpu"


def running(variant: str):
    """The kernel variant in force for a block: an ISA on the CPU, nothing to select on CUDA."""
    return contextlib.nullcontext() if variant == "cuda" else ops.use_isa(variant)


def to(dev, *ts):
    return tuple(t.to(dev) if isinstance(t, torch.Tensor) else t for t in ts)
