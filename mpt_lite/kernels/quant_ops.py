"""Quantized weights: quantize, dequantize (whole or by rows) and matmul for int8, nf4 and int4,
on the CPU kernels or, for CUDA tensors, the CUDA kernels."""
from __future__ import annotations

import os

import torch

from .checks import (check_activations, check_bias, check_blocksize, check_dim, check_int4_scales, check_row_ids,
                     check_shape, check_tensor, check_threads, op_device, ptr, weight_f32)
from .extension import _C, amx_enabled, amx_int8_enabled, current_isa, launch
from .layouts import (INT4_GROUP, INT4_SCALE_DTYPE, NF4_BLOCKSIZE, Q8_GEMM_MIN_K, check_int4_group, int4_group_of,
                      int4_groups, nf4_q8_ok, use_bf16, use_q8)

# ---- quantized matmuls (int8, nf4, int4) ----
# Formats and byte layouts: csrc/cpu/quant_formats.h. Weights are W [N = out, K = in]; the matmuls
# compute y = x @ W^T (+ bias) for x [..., K] in float32 or bfloat16 (bfloat16 is widened to float32
# for the kernel and y is returned in x's dtype).
#
# AMX: where kernels.amx_enabled(), the many-row q8 matmuls (AMX_MIN_ROWS rows, Q8_GEMM_MIN_K in_features,
# q8 None) take x and the weight as bf16 operands on the AMX tiles instead (bf16_operands; layouts.use_bf16).
# Activations: at most Q8_MAX_ROWS rows of x (decode), or any number from Q8_GEMM_MIN_K in_features
# on (prefill through the integer GEMM tiles; layouts.use_q8), the kernels quantize x to int8 per block
# of 32 along K, as ggml's q8_0 does (ref_quantize_q8), and sum integer products per block; otherwise
# x stays float32. nf4 takes that path with its codes held as 7-bit integers (NF4_INT8, llama.cpp's IQ4_NL
# scheme) where nf4_q8_ok(K, blocksize), and keeps float activations elsewhere.
# The `q8` argument of the matmuls forces the choice (None: by the row count and in_features).
# ref_matmul_* mirror exactly that choice: F.linear(ref_dequantize_q8(x) or x, dequantized W) in
# float32, and every kernel variant equals its mirror to float32 rounding.
#
# Error of q8 against float activations: each x is rounded to q * d with d = amax_block / 127, an
# error of at most d / 2 (1/254 of its block's largest magnitude), so for every output
#   |y_q8 - y_float| <= sum_k |W[n, k]| * d[block(k)] / 2   (+ float32 rounding),
# a relative error of at most 1/254 of sum_k |W[n, k]| * amax_block(k); tested in
# tests/test_quant_kernels.py, together with cosine >= 0.9999 on random data.
#
# num_threads (keyword, every CPU op): at most that many of the kernels' pool threads for this call
# (None: the pool's size, set_num_threads); a model's num_threads arrives here. CUDA ops ignore it.


# CUDA, more rows than the GEMV takes (batched decode, prefill): from this many rows of x the
# weight's operand is expanded to bfloat16 (a slab of at most _CUBLAS_SLAB_BYTES at a time) and
# multiplied by cuBLAS through torch, float32 out (measured 2-5x faster than the WMMA GEMM kernel at
# 64-512 rows on an H200, docs/cuda.md); below it the WMMA kernel runs. Both compute
# ref_matmul_bf16_operands.
CUDA_CUBLAS_MIN_M = 9
_CUBLAS_SLAB_BYTES = 64 << 20


# torch with aten::mm.dtype (2.8+) multiplies bf16 operands into a float32 result directly; older
# torch gets the operands widened to float32 (the same products, float32 sums). Decided once here:
# catching the call's errors instead would also swallow real CUDA failures (out of memory, a bad
# launch) and retry them with 2x larger operands.
_MM_OUT_DTYPE = "dtype" in torch.ops.aten.mm.overloads()


def _mm_bf16_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b [N, K]^T in bfloat16 on the tensor cores, float32 accumulation and output."""
    if _MM_OUT_DTYPE:
        return torch.mm(a, b.t(), out_dtype=torch.float32)
    return torch.mm(a.float(), b.float().t())


def _cuda_cublas_matmul(fmt: str, x2: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, N: int, K: int,
                        bs: int, b: torch.Tensor | None) -> torch.Tensor:
    dev = data.device
    xb = x2.to(torch.bfloat16)
    y = torch.empty(x2.shape[0], N, dtype=torch.float32, device=dev)
    step = max(1, min(N, _CUBLAS_SLAB_BYTES // max(1, 2 * K)))
    slab = torch.empty(step, K, dtype=torch.bfloat16, device=dev)
    for n0 in range(0, N, step):
        rows = min(step, N - n0)
        _C.operand_bf16_cuda(**launch(dev), format=fmt, data=ptr(data), scale=ptr(scale), n=N, k=K, blocksize=bs,
                             row0=n0, n_rows=rows, out=ptr(slab))
        y[:, n0:n0 + rows] = _mm_bf16_f32(xb, slab[:rows])
    if fmt == "int8":
        y *= scale * (1.0 / 127.0)
    if b is not None:
        y += b
    return y


def _cuda_matmul(fmt: str, x: object, data: torch.Tensor, scale: torch.Tensor, N: int, K: int, bs: int,
                 bias: object) -> torch.Tensor:
    dev = data.device
    x2, lead = check_activations(x, K, dev)
    b = check_bias(bias, N, dev)
    data, scale = data.contiguous(), scale.contiguous()
    if x2.shape[0] >= CUDA_CUBLAS_MIN_M and K > 0 and N > 0:
        y = _cuda_cublas_matmul(fmt, x2, data, scale, N, K, bs, b)
    else:
        y = torch.empty(x2.shape[0], N, dtype=torch.float32, device=dev)
        _C.matmul_cuda(**launch(dev), format=fmt, x=ptr(x2), m=x2.shape[0], data=ptr(data), scale=ptr(scale), n=N,
                       k=K, blocksize=bs, bias=0 if b is None else ptr(b), y=ptr(y))
    return y.reshape(*lead, N).to(x.dtype)


def _cuda_dequantize(fmt: str, data: torch.Tensor, scale: torch.Tensor, N: int, K: int, bs: int,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
    dev = data.device
    data, scale = data.contiguous(), scale.contiguous()
    n = N if rows is None else rows.numel()
    out = torch.empty(n, K, dtype=torch.float32, device=dev)
    weight = dict(format=fmt, data=ptr(data), scale=ptr(scale), n=N, k=K, blocksize=bs)
    if rows is None:
        _C.dequantize_cuda(**launch(dev), **weight, out=ptr(out))
    else:
        _C.dequantize_rows_cuda(**launch(dev), **weight, rows=ptr(rows), n_rows=n, out=ptr(out))
    return out


def _run_matmul(fn, x: object, K: int, N: int, bias: object, weights: dict, q8: object,
                num_threads: object) -> torch.Tensor:
    threads = check_threads(num_threads)
    x2, lead = check_activations(x, K)
    b = check_bias(bias, N)
    y = torch.empty(x2.shape[0], N, dtype=torch.float32)
    rows = x2.shape[0]
    fn(x=ptr(x2), m=rows, k=K, n=N, bias=0 if b is None else ptr(b), y=ptr(y), **weights,
       q8=use_q8(q8, rows, K), bf16=bf16_operands(q8, rows, K), num_threads=threads)
    return y.reshape(*lead, N).to(x.dtype)


def bf16_operands(q8: object, rows: int, in_features: int) -> bool:
    """Whether a CPU matmul of `rows` activation rows with this q8 argument takes bf16 operands on the
    AMX tiles now (layouts.use_bf16 on this machine); ref_matmul_*(..., bf16=...) mirrors it."""
    return use_bf16(q8, rows, in_features, True) and amx_enabled()  # asks the extension only when it matters


def _no_q8_on_cuda(q8: object) -> None:
    if q8:
        raise ValueError("q8 activations are a CPU kernel path; the CUDA kernels take float activations")


# int8: cb int8 [N, K], scb float32 [N]; W = (cb * scb) / 127 (bitsandbytes CB/SCB).

def quantize_int8(w: torch.Tensor, *, num_threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    threads = check_threads(num_threads)
    w = weight_f32("w", w)
    N, K = w.shape
    cb = torch.empty(N, K, dtype=torch.int8, device=w.device)
    scb = torch.empty(N, dtype=torch.float32, device=w.device)
    if w.is_cuda:
        _C.quantize_int8_cuda(**launch(w.device), w=ptr(w), n=N, k=K, cb=ptr(cb), scb=ptr(scb))
    else:
        _C.quantize_int8(w=ptr(w), n=N, k=K, cb=ptr(cb), scb=ptr(scb), num_threads=threads)
    return cb, scb


def _check_int8(cb: object, scb: object) -> tuple[int, int]:
    check_tensor("cb", cb, (torch.int8,), ndim=2, device=op_device("cb", cb))
    check_tensor("scb", scb, (torch.float32,), ndim=1, device=cb.device)
    check_shape("scb", scb, (cb.shape[0],))
    return cb.shape[0], cb.shape[1]


def dequantize_int8(cb: torch.Tensor, scb: torch.Tensor, *, num_threads: int | None = None) -> torch.Tensor:
    threads = check_threads(num_threads)
    N, K = _check_int8(cb, scb)
    if cb.is_cuda:
        return _cuda_dequantize("int8", cb, scb, N, K, 0)
    cb, scb = cb.contiguous(), scb.contiguous()
    out = torch.empty(N, K, dtype=torch.float32)
    _C.dequantize_int8(cb=ptr(cb), scb=ptr(scb), n=N, k=K, out=ptr(out), num_threads=threads)
    return out


def dequantize_rows_int8(cb: torch.Tensor, scb: torch.Tensor, ids: torch.Tensor, *,
                         num_threads: int | None = None, rows8: bool = False) -> torch.Tensor:
    """rows8: cb is in the rows8 layout (int8_to_rows8; CPU tensors only)."""
    threads = check_threads(num_threads)
    N, K = _check_int8(cb, scb)
    if rows8:
        _check_int8_rows8(cb, N, K)
    cb, scb, rows = cb.contiguous(), scb.contiguous(), check_row_ids(ids, N, cb.device)
    if cb.is_cuda:
        return _cuda_dequantize("int8", cb, scb, N, K, 0, rows).reshape(*ids.shape, K)
    out = torch.empty(rows.numel(), K, dtype=torch.float32)
    if rows8:
        _C.dequantize_rows_int8_rows8(cb=ptr(cb), scb=ptr(scb), n=N, k=K, rows=ptr(rows), n_rows=rows.numel(),
                                      out=ptr(out), num_threads=threads)
    else:
        _C.dequantize_rows_int8(cb=ptr(cb), scb=ptr(scb), k=K, rows=ptr(rows), n_rows=rows.numel(), out=ptr(out),
                                num_threads=threads)
    return out.reshape(*ids.shape, K)


def matmul_int8(x: torch.Tensor, cb: torch.Tensor, scb: torch.Tensor, bias: torch.Tensor | None = None,
                q8: bool | None = None, *, num_threads: int | None = None, rows8: bool = False) -> torch.Tensor:
    """rows8: cb is in the rows8 layout (int8_to_rows8; CPU tensors only)."""
    N, K = _check_int8(cb, scb)
    if rows8:
        _check_int8_rows8(cb, N, K)
    if cb.is_cuda:
        _no_q8_on_cuda(q8)
        return _cuda_matmul("int8", x, cb, scb, N, K, 0, bias)
    cb, scb = cb.contiguous(), scb.contiguous()
    return _run_matmul(_C.matmul_int8, x, K, N, bias, {"cb": ptr(cb), "scb": ptr(scb), "rows8": bool(rows8)}, q8,
                       num_threads)


# nf4: packed uint8 [ceil(N*K/2)] over the flattened weight (first element in the high nibble),
# absmax float32 [ceil(N*K/blocksize)]; W = NF4_CODE[q] * absmax[block] (bitsandbytes NF4).

def quantize_nf4(w: torch.Tensor, blocksize: int = NF4_BLOCKSIZE, *,
                 num_threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    threads = check_threads(num_threads)
    w = weight_f32("w", w)
    bs = check_blocksize(blocksize)
    numel = w.numel()
    packed = torch.empty((numel + 1) // 2, dtype=torch.uint8, device=w.device)
    absmax = torch.empty((numel + bs - 1) // bs, dtype=torch.float32, device=w.device)
    if w.is_cuda:
        _C.quantize_nf4_cuda(**launch(w.device), w=ptr(w), numel=numel, blocksize=bs, packed=ptr(packed),
                             absmax=ptr(absmax))
    else:
        _C.quantize_nf4(w=ptr(w), numel=numel, blocksize=bs, packed=ptr(packed), absmax=ptr(absmax),
                        num_threads=threads)
    return packed, absmax


def _check_nf4(packed: object, absmax: object, shape: object, blocksize: object) -> tuple[int, int, int]:
    if not (isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 2):
        raise TypeError(f"shape must be (out_features, in_features), got {shape!r}")
    N, K = check_dim("shape[0]", shape[0]), check_dim("shape[1]", shape[1])
    bs = check_blocksize(blocksize)
    check_tensor("packed", packed, (torch.uint8,), device=op_device("packed", packed))
    check_tensor("absmax", absmax, (torch.float32,), ndim=1, device=packed.device)
    if packed.numel() != (N * K + 1) // 2:
        raise ValueError(f"packed must hold {(N * K + 1) // 2} bytes for shape {(N, K)}, got {packed.numel()}")
    check_shape("absmax", absmax, ((N * K + bs - 1) // bs,))
    return N, K, bs


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int = NF4_BLOCKSIZE, *,
                   num_threads: int | None = None) -> torch.Tensor:
    threads = check_threads(num_threads)
    N, K, bs = _check_nf4(packed, absmax, shape, blocksize)
    if packed.is_cuda:
        return _cuda_dequantize("nf4", packed, absmax, N, K, bs)
    packed, absmax = packed.contiguous(), absmax.contiguous()
    out = torch.empty(N, K, dtype=torch.float32)
    _C.dequantize_nf4(packed=ptr(packed), absmax=ptr(absmax), numel=N * K, blocksize=bs, out=ptr(out),
                      num_threads=threads)
    return out


def dequantize_rows_nf4(packed, absmax, shape, ids, blocksize: int = NF4_BLOCKSIZE, *,
                        num_threads: int | None = None) -> torch.Tensor:
    threads = check_threads(num_threads)
    N, K, bs = _check_nf4(packed, absmax, shape, blocksize)
    rows = check_row_ids(ids, N, packed.device)
    if packed.is_cuda:
        return _cuda_dequantize("nf4", packed, absmax, N, K, bs, rows).reshape(*ids.shape, K)
    out = torch.empty(rows.numel(), K, dtype=torch.float32)
    packed, absmax = packed.contiguous(), absmax.contiguous()
    _C.dequantize_rows_nf4(packed=ptr(packed), absmax=ptr(absmax), k=K, blocksize=bs, rows=ptr(rows),
                           n_rows=rows.numel(), out=ptr(out), num_threads=threads)
    return out.reshape(*ids.shape, K)


def matmul_nf4(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int = NF4_BLOCKSIZE,
               bias: torch.Tensor | None = None, q8: bool | None = None, *,
               num_threads: int | None = None, rows8: bool = False) -> torch.Tensor:
    """q8 (None: by the row count) takes effect only where nf4_q8_ok(K, blocksize). rows8: packed and absmax
    are in the rows8 layout (nf4_to_rows8; CPU tensors only)."""
    N, K, bs = _check_nf4(packed, absmax, shape, blocksize)
    if rows8:
        _check_rows8(packed, N)
    if packed.is_cuda:
        _no_q8_on_cuda(q8)
        return _cuda_matmul("nf4", x, packed, absmax, N, K, bs, bias)
    packed, absmax = packed.contiguous(), absmax.contiguous()
    return _run_matmul(_C.matmul_nf4, x, K, N, bias, {"packed": ptr(packed), "absmax": ptr(absmax), "blocksize": bs,
                                                      "rows8": bool(rows8)}, q8, num_threads)


# int4: packed uint8 [N, G*16] (G = ceil(K/32) units of 32 k), scales float16 [N, C], C = ceil(K/group), group
# 32 (4.5 bits per weight), 64 (4.25) or 128 (4.125); W = (q - 8) * d. The group is read from the scales' shape.
# Before format version 3 the scales were float32; kernels reject those (check_int4_scales).

def quantize_int4(w: torch.Tensor, *, group: int = INT4_GROUP,
                  num_threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    threads = check_threads(num_threads)
    group = check_int4_group(group)
    w = weight_f32("w", w)
    N, K = w.shape
    packed = torch.empty(N, int4_groups(K) * 16, dtype=torch.uint8, device=w.device)
    scales = torch.empty(N, int4_groups(K, group), dtype=INT4_SCALE_DTYPE, device=w.device)
    if w.is_cuda:
        if group != INT4_GROUP:
            raise ValueError(f"int4 group {group} is quantized on the CPU (the CUDA quantizer takes groups of 32)")
        _C.quantize_int4_cuda(**launch(w.device), w=ptr(w), n=N, k=K, packed=ptr(packed), scales=ptr(scales))
    else:
        _C.quantize_int4(w=ptr(w), n=N, k=K, packed=ptr(packed), scales=ptr(scales), group=group, num_threads=threads)
    return packed, scales


def _check_int4(packed: object, scales: object, in_features: object) -> tuple[int, int, int]:
    """(N, K, group) of an int4 weight."""
    K = check_dim("in_features", in_features)
    check_tensor("packed", packed, (torch.uint8,), ndim=2, device=op_device("packed", packed))
    check_int4_scales(scales, packed.device)
    N = packed.shape[0]
    check_shape("packed", packed, (N, int4_groups(K) * 16))
    group = int4_group_of(K, scales.shape[1]) if scales.shape[0] == N else None
    if group is None:
        raise ValueError(f"scales must be [{N}, ceil({K} / group)] for a group of 32, 64, 128 or 256 in_features, "
                         f"got {list(scales.shape)}")
    return N, K, group


def int4_unit_scales(scales: torch.Tensor, in_features: int) -> torch.Tensor:
    """int4 scales (row layout) of any group as one scale per 32 k (each repeated): the same weight, for the
    kernels that take groups of 32 only (CUDA)."""
    group = int4_group_of(in_features, scales.shape[1])
    if group is None or group == INT4_GROUP:
        return scales
    return scales.repeat_interleave(group // INT4_GROUP, dim=1)[:, :int4_groups(in_features)].contiguous()


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, in_features: int, *,
                    num_threads: int | None = None) -> torch.Tensor:
    threads = check_threads(num_threads)
    N, K, group = _check_int4(packed, scales, in_features)
    if packed.is_cuda:
        return _cuda_dequantize("int4", packed, int4_unit_scales(scales, K), N, K, 0)
    out = torch.empty(N, K, dtype=torch.float32)
    packed, scales = packed.contiguous(), scales.contiguous()
    _C.dequantize_int4(packed=ptr(packed), scales=ptr(scales), n=N, k=K, out=ptr(out), group=group,
                       num_threads=threads)
    return out


def dequantize_rows_int4(packed, scales, in_features: int, ids, *, num_threads: int | None = None) -> torch.Tensor:
    threads = check_threads(num_threads)
    N, K, group = _check_int4(packed, scales, in_features)
    rows = check_row_ids(ids, N, packed.device)
    if packed.is_cuda:
        return _cuda_dequantize("int4", packed, int4_unit_scales(scales, K), N, K, 0, rows).reshape(*ids.shape, K)
    out = torch.empty(rows.numel(), K, dtype=torch.float32)
    packed, scales = packed.contiguous(), scales.contiguous()
    _C.dequantize_rows_int4(packed=ptr(packed), scales=ptr(scales), k=K, rows=ptr(rows), n_rows=rows.numel(),
                            out=ptr(out), group=group, num_threads=threads)
    return out.reshape(*ids.shape, K)


def matmul_int4(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, in_features: int,
                bias: torch.Tensor | None = None, q8: bool | None = None, *,
                num_threads: int | None = None, rows8: bool = False) -> torch.Tensor:
    """rows8: packed and scales are in the rows8 layout (int4_to_rows8; CPU tensors only). On CUDA, scales of
    groups larger than 32 are repeated per 32 k for each call (the CUDA kernels read groups of 32)."""
    N, K, group = _check_int4(packed, scales, in_features)
    if rows8:
        _check_rows8(packed, N)
    if packed.is_cuda:
        _no_q8_on_cuda(q8)
        return _cuda_matmul("int4", x, packed, int4_unit_scales(scales, K), N, K, 0, bias)
    packed, scales = packed.contiguous(), scales.contiguous()
    return _run_matmul(_C.matmul_int4, x, K, N, bias, {"packed": ptr(packed), "scales": ptr(scales),
                                                       "rows8": bool(rows8), "group": group}, q8, num_threads)


# The rows8 layouts of int4, nf4 and int8 (csrc/cpu/quant_formats.h): the same codes and scales, in the same
# shapes and dtypes, with 8 rows interleaved per group of 32 k, so that one 32-byte load feeds 8 output rows.
# The AVX2 (int4, nf4) and AVX-512 kernels read them with no per-call decode; every other kernel takes the
# saved layout.

def _check_rows8(packed: torch.Tensor, N: int) -> None:
    if packed.is_cuda:
        raise ValueError("the rows8 layout is a CPU layout; convert back (int4_from_rows8 / nf4_from_rows8 / "
                         "int8_from_rows8) before moving to CUDA")
    if N % 8:
        raise ValueError(f"the rows8 layout needs a multiple of 8 rows, got {N}")


def _check_int8_rows8(cb: torch.Tensor, N: int, K: int) -> None:
    _check_rows8(cb, N)
    if K % 32:
        raise ValueError(f"the int8 rows8 layout needs in_features a multiple of 32, got {K}")


def _int8_convert(cb, scb, to_rows8: bool, num_threads) -> torch.Tensor:
    threads = check_threads(num_threads)
    N, K = _check_int8(cb, scb)
    _check_int8_rows8(cb, N, K)
    cb = cb.contiguous()
    out = torch.empty_like(cb)
    _C.int8_rows8(cb=ptr(cb), n=N, k=K, out=ptr(out), to_rows8=to_rows8, num_threads=threads)
    return out


def int8_to_rows8(cb: torch.Tensor, scb: torch.Tensor, *, num_threads: int | None = None) -> torch.Tensor:
    """int8 codes (row layout) in the rows8 layout, as a new tensor; scb is unchanged by the layout (it is
    only checked against cb). N a multiple of 8, K of 32."""
    return _int8_convert(cb, scb, True, num_threads)


def int8_from_rows8(cb: torch.Tensor, scb: torch.Tensor, *, num_threads: int | None = None) -> torch.Tensor:
    """int8 codes in the rows8 layout back in the row layout, as a new tensor."""
    return _int8_convert(cb, scb, False, num_threads)


def _int4_convert(packed, scales, in_features, to_rows8: bool, num_threads) -> tuple[torch.Tensor, torch.Tensor]:
    threads = check_threads(num_threads)
    N, K, group = _check_int4(packed, scales, in_features)
    _check_rows8(packed, N)
    packed, scales = packed.contiguous(), scales.contiguous()
    out_p, out_s = torch.empty_like(packed), torch.empty_like(scales)
    _C.int4_rows8(packed=ptr(packed), scales=ptr(scales), n=N, k=K, out_packed=ptr(out_p), out_scales=ptr(out_s),
                  to_rows8=to_rows8, group=group, num_threads=threads)
    return out_p, out_s


def int4_to_rows8(packed: torch.Tensor, scales: torch.Tensor, in_features: int, *,
                  num_threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """int4 codes and scales (row layout) in the rows8 layout, as new tensors."""
    return _int4_convert(packed, scales, in_features, True, num_threads)


def int4_from_rows8(packed: torch.Tensor, scales: torch.Tensor, in_features: int, *,
                    num_threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """int4 codes and scales in the rows8 layout back in the row layout, as new tensors."""
    return _int4_convert(packed, scales, in_features, False, num_threads)


def _nf4_convert(packed, absmax, shape, blocksize, to_rows8: bool, num_threads) -> tuple[torch.Tensor, torch.Tensor]:
    threads = check_threads(num_threads)
    N, K, bs = _check_nf4(packed, absmax, shape, blocksize)
    _check_rows8(packed, N)
    if not nf4_q8_ok(K, bs):
        raise ValueError(f"the nf4 rows8 layout needs a power-of-two blocksize >= 32 that divides in_features; "
                         f"got blocksize {bs} for in_features {K}")
    packed, absmax = packed.contiguous(), absmax.contiguous()
    out_p, out_a = torch.empty_like(packed), torch.empty_like(absmax)
    _C.nf4_rows8(packed=ptr(packed), absmax=ptr(absmax), n=N, k=K, blocksize=bs, out_packed=ptr(out_p),
                 out_absmax=ptr(out_a), to_rows8=to_rows8, num_threads=threads)
    return out_p, out_a


def nf4_to_rows8(packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int = NF4_BLOCKSIZE, *,
                 num_threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """nf4 codes and absmax (bitsandbytes' layout) in the rows8 layout, as new tensors (nf4_q8_ok shapes)."""
    return _nf4_convert(packed, absmax, shape, blocksize, True, num_threads)


def nf4_from_rows8(packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int = NF4_BLOCKSIZE, *,
                   num_threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """nf4 codes and absmax in the rows8 layout back in bitsandbytes' layout, as new tensors."""
    return _nf4_convert(packed, absmax, shape, blocksize, False, num_threads)


def rows8_preferred(rows: int, quant_type: str = "int4", in_features: int | None = None,
                    group_size: int = INT4_GROUP) -> bool:
    """Whether a CPU weight of `rows` output rows in `quant_type` is best held in rows8 now: rows is a
    multiple of 8 and the current ISA is AVX-512 without AMX-INT8 tiles, or (int4 / nf4) AVX2 (the rows8
    kernels beat the row layout's at every row count there, docs/benchmarks.md; AMX machines keep the layout
    their tiles read, unmeasured against rows8; AVX2 has no int8 rows8 kernel, and the portable kernels read
    the saved layouts, so rows8 would cost them a conversion per call). int8 also needs in_features (when
    given) of at least Q8_GEMM_MIN_K: below it calls of more than Q8_MAX_ROWS rows take float activations,
    which no rows8 kernel reads (a converted copy a call: a 125M model's tied int8 embedding in rows8 made
    its batch 32 2.7x slower). MPT_LITE_ROWS8=0 keeps the saved layouts, =1 takes rows8 on every CPU and
    shape (A/B runs, tests). int4 with group_size above 32 takes rows8 on every AVX2 / AVX-512 CPU (AMX ones too):
    the rows8 kernels read its wider groups, the row layout's would get them widened to 32 per call."""
    if quant_type not in ("int4", "nf4", "int8"):
        raise ValueError(f"unknown quant_type {quant_type!r}")
    switch = os.environ.get("MPT_LITE_ROWS8", "")
    if rows % 8 or switch == "0":
        return False
    if switch == "1":
        return True
    if quant_type == "int8" and in_features is not None and in_features < Q8_GEMM_MIN_K:
        return False
    isa = current_isa()
    if quant_type == "int4" and group_size != INT4_GROUP and isa in ("avx2", "avx512"):
        return True
    return (isa == "avx2" and quant_type != "int8") or (isa == "avx512" and not amx_int8_enabled())
