"""Layer norm, residual add, GELU and column slices of float32 CPU activations on the kernel pool. forward() on the
CPU uses them for large tensors where torch's own ops would open OpenMP parallel regions: their
workers keep spinning after each region and take the cores that the pool's matmuls need next (a
script that imports torch before mpt_lite gets torch's default, spinning, wait policy)."""
from __future__ import annotations

import torch

from .checks import check_tensor, ptr
from .extension import _C


def applies(*tensors: torch.Tensor | None) -> bool:
    """Whether these ops may stand in for torch's: float32 CPU tensors, nothing autograd must track."""
    track = torch.is_grad_enabled()
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32 and not (track and t.requires_grad))
               for t in tensors)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """F.layer_norm over the last dimension (float32 sums: within float32 rounding of torch's)."""
    check_tensor("x", x, (torch.float32,), device="cpu")
    d = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_tensor(name, t, (torch.float32,), ndim=1, device="cpu")
            if t.shape[0] != d:
                raise ValueError(f"{name} has {t.shape[0]} elements, x rows have {d}")
    x = x.contiguous()
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    y = torch.empty_like(x)
    _C.layer_norm_rows(x=ptr(x), weight=ptr(weight), bias=0 if bias is None else ptr(bias), m=x.numel() // max(d, 1),
                       d=d, eps=float(eps), y=ptr(y))
    return y


def add_(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x += y in place (same shape, contiguous float32 CPU tensors); returns x."""
    for name, t in (("x", x), ("y", y)):
        check_tensor(name, t, (torch.float32,), device="cpu")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    _C.add_inplace(x=ptr(x), y=ptr(y), n=x.numel())
    return x


def gelu_(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU in place of a contiguous float32 CPU tensor, as the native step computes it."""
    check_tensor("x", x, (torch.float32,), device="cpu")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous")
    _C.gelu_inplace(x=ptr(x), n=x.numel())
    return x


def split_columns(x: torch.Tensor, widths: list[int]) -> list[torch.Tensor]:
    """x.split(widths, dim=-1), each piece made contiguous (a float32 CPU tensor with contiguous rows)."""
    check_tensor("x", x, (torch.float32,), device="cpu")
    if sum(widths) != x.shape[-1] or min(widths, default=0) < 0:
        raise ValueError(f"widths {widths} do not add up to the last dimension {x.shape[-1]}")
    x = x.contiguous()
    m, stride = x.numel() // max(x.shape[-1], 1), x.shape[-1]
    out, col = [], 0
    for w in widths:
        y = torch.empty(*x.shape[:-1], w)
        _C.copy_columns(src=ptr(x), m=m, stride=stride, col=col, width=w, dst=ptr(y))
        out.append(y)
        col += w
    return out
