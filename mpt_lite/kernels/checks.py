"""Argument checks shared by the kernel ops: each raises a clear error naming the argument, so
that nothing malformed reaches the C++ side."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .extension import NO_CUDA_BUILD, cuda_built

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

def op_device(name: str, t: object) -> torch.device:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type == "cuda":
        if not cuda_built():
            raise ValueError(f"{name} is on {t.device}, but {NO_CUDA_BUILD}")
    elif t.device.type != "cpu":
        raise ValueError(f"{name} must be on cpu or cuda, got {t.device}")
    return t.device


# ---- tensor checks shared by the ops ----

def check_tensor(name: str, t: object, dtypes: Sequence[torch.dtype], ndim: int | None = None,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if (t.device != device) if isinstance(device, torch.device) else (t.device.type != device):
        raise ValueError(f"{name} must be on {device}, got {t.device}")
    return t


def ptr(t: torch.Tensor) -> int:
    """The address of a contiguous tensor's first element, for _C."""
    if not t.is_contiguous():
        raise ValueError("internal error: a non-contiguous tensor reached a kernel")
    return t.data_ptr()


def weight_f32(name: str, w: object) -> torch.Tensor:
    check_tensor(name, w, FLOAT_DTYPES, ndim=2, device=op_device(name, w))
    w = w.detach().to(torch.float32).contiguous()
    # One pass where all is well: a finite sum means finite values (NaN and inf carry into the sum); a sum
    # that overflowed is told apart by the exact check.
    if not math.isfinite(float(w.sum())) and not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} holds NaN or infinite values; they cannot be quantized")
    return w


def check_dim(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise TypeError(f"{name} must be a non-negative int, got {v!r}")
    return v


def check_shape(name: str, t: torch.Tensor, shape: tuple) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_threads(num_threads: object) -> int:
    """A per-call thread count: None (the pool's size) -> 0, else a positive int."""
    if num_threads is None:
        return 0
    if isinstance(num_threads, bool) or not isinstance(num_threads, int):
        raise TypeError(f"num_threads must be None or a positive int, got {num_threads!r}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be None or a positive int, got {num_threads}")
    return num_threads


def check_blocksize(blocksize: object) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 2 or blocksize % 2:
        raise ValueError(f"blocksize must be an even int >= 2, got {blocksize!r}")
    return blocksize


def check_activations(x: object, K: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, tuple]:
    check_tensor("x", x, (torch.float32, torch.bfloat16), device=device)
    if x.dim() == 0 or x.shape[-1] != K:
        raise ValueError(f"x must have in_features={K} as its last dimension, got shape {tuple(x.shape)}")
    lead = tuple(x.shape[:-1])
    return x.reshape(-1, K).to(torch.float32).contiguous(), lead


def check_int4_scales(scales: object, device: str | torch.device = "cpu") -> torch.Tensor:
    """int4 group scales: float16 [N, G]. float32 was the layout before format version 3."""
    if isinstance(scales, torch.Tensor) and scales.dtype == torch.float32:
        raise TypeError("int4 scales must be float16 (IEEE half, 4.5 bits per weight); got float32, the layout "
                        "before format version 3: convert with int4_half_scales(scales) (rounds each scale to "
                        "half) or requantize the weight")
    return check_tensor("scales", scales, (torch.float16,), ndim=2, device=device)


def check_bias(bias: object, N: int, device: str | torch.device = "cpu") -> torch.Tensor | None:
    if bias is None:
        return None
    check_tensor("bias", bias, FLOAT_DTYPES, ndim=1, device=device)
    check_shape("bias", bias, (N,))
    return bias.to(torch.float32).contiguous()


def check_row_ids(ids: object, N: int, device: str | torch.device = "cpu") -> torch.Tensor:
    check_tensor("ids", ids, (torch.int64, torch.int32), device=device)
    flat = ids.reshape(-1).to(torch.int64).contiguous()
    # The range check reads GPU ids back (a sync), which a CUDA graph capture forbids: the graph's
    # owner (runtime/cuda_graphs.py) checks the ids before it copies them into the graph's input.
    if flat.is_cuda and torch.cuda.is_current_stream_capturing():
        return flat
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= N):
        raise IndexError(f"ids must lie in [0, {N}), got values in [{int(flat.min())}, {int(flat.max())}]")
    return flat
