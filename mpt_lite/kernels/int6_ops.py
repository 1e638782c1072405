"""int6, the tied embedding's 6-bit format (embedding_bits=6): quantize, dequantize (whole or by rows) and
matmul on the CPU kernels. Byte layout: csrc/cpu/quant_int6.h (codes uint8 [N, ceil(K/32)*24], scales
float16 [N, ceil(K/32)]; 6.5 bits per weight). The matmul always takes x as q8 blocks (ref_matmul_int6)."""
from __future__ import annotations

import torch

from .checks import check_activations, check_bias, check_dim, check_row_ids, check_shape, check_tensor, check_threads, ptr, weight_f32
from .extension import _C
from .layouts import INT4_SCALE_DTYPE, int4_groups

INT6_GROUP = 32
INT6_GROUP_BYTES = 24


def int6_row_bytes(in_features: int) -> int:
    return int4_groups(in_features) * INT6_GROUP_BYTES


def _cpu_only(t: torch.Tensor) -> None:
    if t.device.type != "cpu":
        raise ValueError(f"int6 is a CPU format (the tied embedding at embedding_bits=6); got a tensor on {t.device}: "
                         "use embedding_bits=8 or 4 on CUDA")


def _check_int6(codes: object, scales: object, in_features: object) -> tuple[int, int]:
    """(N, K) of an int6 weight."""
    K = check_dim("in_features", in_features)
    if isinstance(codes, torch.Tensor):
        _cpu_only(codes)
    check_tensor("codes", codes, (torch.uint8,), ndim=2)
    check_tensor("scales", scales, (INT4_SCALE_DTYPE,), ndim=2)
    N = codes.shape[0]
    check_shape("codes", codes, (N, int6_row_bytes(K)))
    check_shape("scales", scales, (N, int4_groups(K)))
    return N, K


def quantize_int6(w: torch.Tensor, *, num_threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (codes, scales): an fp16 scale per 32 k from the group's signed absmax (-32 x scale)."""
    threads = check_threads(num_threads)
    w = weight_f32("w", w)
    _cpu_only(w)
    N, K = w.shape
    codes = torch.empty(N, int6_row_bytes(K), dtype=torch.uint8)
    scales = torch.empty(N, int4_groups(K), dtype=INT4_SCALE_DTYPE)
    _C.quantize_int6(w=ptr(w), n=N, k=K, codes=ptr(codes), scales=ptr(scales), num_threads=threads)
    return codes, scales


def dequantize_int6(codes: torch.Tensor, scales: torch.Tensor, in_features: int, *,
                    num_threads: int | None = None) -> torch.Tensor:
    threads = check_threads(num_threads)
    N, K = _check_int6(codes, scales, in_features)
    out = torch.empty(N, K, dtype=torch.float32)
    codes, scales = codes.contiguous(), scales.contiguous()
    _C.dequantize_int6(codes=ptr(codes), scales=ptr(scales), n=N, k=K, out=ptr(out), num_threads=threads)
    return out


def dequantize_rows_int6(codes, scales, in_features: int, ids, *, num_threads: int | None = None) -> torch.Tensor:
    threads = check_threads(num_threads)
    N, K = _check_int6(codes, scales, in_features)
    rows = check_row_ids(ids, N)
    out = torch.empty(rows.numel(), K, dtype=torch.float32)
    codes, scales = codes.contiguous(), scales.contiguous()
    _C.dequantize_rows_int6(codes=ptr(codes), scales=ptr(scales), k=K, rows=ptr(rows), n_rows=rows.numel(),
                            out=ptr(out), num_threads=threads)
    return out.reshape(*ids.shape, K)


def matmul_int6(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, in_features: int,
                bias: torch.Tensor | None = None, *, num_threads: int | None = None) -> torch.Tensor:
    """y = x @ W^T (+ bias) with x as q8 blocks; y in x's dtype."""
    threads = check_threads(num_threads)
    N, K = _check_int6(codes, scales, in_features)
    x2, lead = check_activations(x, K)
    b = check_bias(bias, N)
    y = torch.empty(x2.shape[0], N, dtype=torch.float32)
    codes, scales = codes.contiguous(), scales.contiguous()
    _C.matmul_int6(x=ptr(x2), m=x2.shape[0], k=K, codes=ptr(codes), scales=ptr(scales), n=N,
                   bias=0 if b is None else ptr(b), y=ptr(y), num_threads=threads)
    return y.reshape(*lead, N).to(x.dtype)
