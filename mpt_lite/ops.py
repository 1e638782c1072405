"""The only Python module that calls the C++ extension (mpt_lite._C).

Each op checks its tensors (dtype, device, shape, contiguity) and raises a clear error, then
hands raw pointers and sizes to _C. Beside each op sits ``ref_<op>``: the plain-torch reference
that mirrors exactly what the kernel computes; tests compare every kernel variant against it."""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F

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


# ---- devices ----
# Each op runs where its leading tensor (the weight, or the KV cache) lives: CPU tensors go to the
# CPU kernels, CUDA tensors to the CUDA kernels (csrc/cuda) on torch's current stream of that
# device. Every other tensor of the call must be on the same device (index arrays of the
# attention ops may also stay on the CPU: the CUDA path checks a host copy and copies them over).

NO_CUDA_BUILD = ("mpt_lite was built without CUDA (MPT_LITE_CUDA=on python setup.py build_ext --inplace, "
                 "with nvcc on the PATH, builds the CUDA kernels)")
CUDA_GEMV_MAX_M = int(getattr(_C, "cuda_gemv_max_m", 8))


def cuda_built() -> bool:
    """Whether this build of mpt_lite._C holds the CUDA kernels."""
    return bool(_C.with_cuda)


def cuda_available() -> bool:
    """The CUDA build and a GPU that torch sees."""
    return cuda_built() and torch.cuda.is_available()


def _op_device(name: str, t: object) -> torch.device:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type == "cuda":
        if not _C.with_cuda:
            raise ValueError(f"{name} is on {t.device}, but {NO_CUDA_BUILD}")
    elif t.device.type != "cpu":
        raise ValueError(f"{name} must be on cpu or cuda, got {t.device}")
    return t.device


def _launch(dev: torch.device) -> tuple[int, int]:
    """(device index, current stream handle) for a CUDA kernel call."""
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return index, torch.cuda.current_stream(index).cuda_stream


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


# ---- quantized matmuls (int8, nf4, int4) ----
# Formats and byte layouts: csrc/cpu/quant_formats.h. Weights are W [N = out, K = in]; the matmuls
# compute y = x @ W^T (+ bias) for x [..., K] in float32 or bfloat16 (bfloat16 is widened to float32
# for the kernel and y is returned in x's dtype).
#
# Activations: for int8 and int4 weights and at most Q8_MAX_ROWS rows of x (decode), the kernels
# quantize x to int8 per block of 32 along K, as ggml's q8_0 does (ref_quantize_q8), and sum integer
# products per block; otherwise (nf4, whose codes are not integers, and prefill) x stays float32.
# The `q8` argument of matmul_int8 / matmul_int4 forces the choice (None: by the row count).
# ref_matmul_* mirror exactly that choice: F.linear(ref_dequantize_q8(x) or x, dequantized W) in
# float32, and every kernel variant equals its mirror to float32 rounding.
#
# Error of q8 against float activations: each x is rounded to q * d with d = amax_block / 127, an
# error of at most d / 2 (1/254 of its block's largest magnitude), so for every output
#   |y_q8 - y_float| <= sum_k |W[n, k]| * d[block(k)] / 2   (+ float32 rounding),
# a relative error of at most 1/254 of sum_k |W[n, k]| * amax_block(k); tested in
# tests/test_quant_kernels.py, together with cosine >= 0.9999 on random data.

NF4_CODE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
            -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
            0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
            0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
NF4_BLOCKSIZE = 64
INT4_GROUP = 32
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def nf4_code() -> torch.Tensor:
    return torch.tensor(NF4_CODE, dtype=torch.float32)


def int4_groups(in_features: int) -> int:
    return (in_features + INT4_GROUP - 1) // INT4_GROUP


def _weight_f32(name: str, w: object) -> torch.Tensor:
    check_tensor(name, w, _FLOATS, ndim=2, device=_op_device(name, w))
    w = w.detach().to(torch.float32).contiguous()
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} holds NaN or infinite values; they cannot be quantized")
    return w


def _dim(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise TypeError(f"{name} must be a non-negative int, got {v!r}")
    return v


def _check_shape(name: str, t: torch.Tensor, shape: tuple) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _check_blocksize(blocksize: object) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 2 or blocksize % 2:
        raise ValueError(f"blocksize must be an even int >= 2, got {blocksize!r}")
    return blocksize


def _activations(x: object, K: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, tuple]:
    check_tensor("x", x, (torch.float32, torch.bfloat16), device=device)
    if x.dim() == 0 or x.shape[-1] != K:
        raise ValueError(f"x must have in_features={K} as its last dimension, got shape {tuple(x.shape)}")
    lead = tuple(x.shape[:-1])
    return x.reshape(-1, K).to(torch.float32).contiguous(), lead


def _bias(bias: object, N: int, device: str | torch.device = "cpu") -> torch.Tensor | None:
    if bias is None:
        return None
    check_tensor("bias", bias, _FLOATS, ndim=1, device=device)
    _check_shape("bias", bias, (N,))
    return bias.to(torch.float32).contiguous()


_FMT_CODE = {"int8": 0, "nf4": 1, "int4": 2}


def _cuda_matmul(fmt: str, x: object, data: torch.Tensor, scale: torch.Tensor, N: int, K: int, bs: int,
                 bias: object) -> torch.Tensor:
    dev = data.device
    x2, lead = _activations(x, K, dev)
    b = _bias(bias, N, dev)
    data, scale = data.contiguous(), scale.contiguous()
    y = torch.empty(x2.shape[0], N, dtype=torch.float32, device=dev)
    _C.matmul_cuda(*_launch(dev), _FMT_CODE[fmt], ptr(x2), x2.shape[0], ptr(data), ptr(scale), N, K, bs,
                   0 if b is None else ptr(b), ptr(y))
    return y.reshape(*lead, N).to(x.dtype)


def _cuda_dequantize(fmt: str, data: torch.Tensor, scale: torch.Tensor, N: int, K: int, bs: int,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
    dev = data.device
    data, scale = data.contiguous(), scale.contiguous()
    n = N if rows is None else rows.numel()
    out = torch.empty(n, K, dtype=torch.float32, device=dev)
    if rows is None:
        _C.dequantize_cuda(*_launch(dev), _FMT_CODE[fmt], ptr(data), ptr(scale), N, K, bs, ptr(out))
    else:
        _C.dequantize_rows_cuda(*_launch(dev), _FMT_CODE[fmt], ptr(data), ptr(scale), N, K, bs, ptr(rows), n,
                                ptr(out))
    return out


def ref_matmul_bf16_operands(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
                             row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """What the CUDA GEMM (M > CUDA_GEMV_MAX_M rows) computes: x and the weight operand w rounded to
    bfloat16, products summed in float32, then times row_scale (int8: w is the codes cb and
    row_scale = scb / 127) plus bias. Returns float32."""
    xb = x.float().to(torch.bfloat16).float()
    wb = w.float().to(torch.bfloat16).float()
    y = xb @ wb.t()
    if row_scale is not None:
        y = y * row_scale.float()
    return y if bias is None else y + bias.float()


def _run_matmul(fn, x: object, K: int, N: int, bias: object, *weights, q8: object = None) -> torch.Tensor:
    x2, lead = _activations(x, K)
    b = _bias(bias, N)
    use_q8 = _use_q8(q8, x2.shape[0])
    y = torch.empty(x2.shape[0], N, dtype=torch.float32)
    fn(ptr(x2), x2.shape[0], K, *weights, N, 0 if b is None else ptr(b), ptr(y), use_q8)
    return y.reshape(*lead, N).to(x.dtype)


def _row_ids(ids: object, N: int, device: str | torch.device = "cpu") -> torch.Tensor:
    check_tensor("ids", ids, (torch.int64, torch.int32), device=device)
    flat = ids.reshape(-1).to(torch.int64).contiguous()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= N):
        raise IndexError(f"ids must lie in [0, {N}), got values in [{int(flat.min())}, {int(flat.max())}]")
    return flat


Q8_MAX_ROWS = 16  # measured: q8 wins up to 16 rows; from 32 the float GEMM is as fast or faster
Q8_BLOCK = 32


def _use_q8(q8: object, rows: int) -> bool:
    if q8 is None:
        return rows <= Q8_MAX_ROWS
    if not isinstance(q8, bool):
        raise TypeError(f"q8 must be None, True or False, got {q8!r}")
    return q8


def ref_quantize_q8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float32 -> (q int8 [M, KB*32], d float32 [M, KB]), KB = ceil(K / 32): per block of 32
    along K (zero-padded), d = amax / 127 and q = round_half_even(x / d) clamped to +-127 (0 where
    d == 0 or the ratio is NaN). Exactly what the kernels compute (csrc/cpu/quant_formats.h, Q8Rows)."""
    x = x.float()
    M, K = x.shape
    KB = (K + Q8_BLOCK - 1) // Q8_BLOCK
    v = torch.zeros(M, KB * Q8_BLOCK)
    v[:, :K] = x
    v = v.view(M, KB, Q8_BLOCK)
    d = v.abs().amax(dim=2) / 127.0
    safe = torch.where(d > 0, d, torch.ones_like(d))
    r = torch.where(d[..., None] > 0, torch.round(v / safe[..., None]), torch.zeros_like(v))
    q = torch.nan_to_num(r, nan=0.0).clamp(-127, 127).to(torch.int8)
    return q.view(M, KB * Q8_BLOCK), d


def ref_dequantize_q8(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] as the q8 kernels see it: q * d per block, in float32."""
    K = x.shape[-1]
    x2 = x.float().reshape(-1, K)
    q, d = ref_quantize_q8(x2)
    xd = (q.float().view(x2.shape[0], -1, Q8_BLOCK) * d[..., None]).view(x2.shape[0], -1)[:, :K]
    return xd.reshape(x.shape)


def _no_q8_on_cuda(q8: object) -> None:
    if q8:
        raise ValueError("q8 activations are a CPU kernel path; the CUDA kernels take float activations")


def _ref_activations(x: torch.Tensor, q8: object) -> torch.Tensor:
    rows = x.numel() // max(x.shape[-1], 1) if x.dim() else 1
    return ref_dequantize_q8(x) if _use_q8(q8, rows) else x.float()


# int8: cb int8 [N, K], scb float32 [N]; W = (cb * scb) / 127 (bitsandbytes CB/SCB).

def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = _weight_f32("w", w)
    N, K = w.shape
    cb = torch.empty(N, K, dtype=torch.int8, device=w.device)
    scb = torch.empty(N, dtype=torch.float32, device=w.device)
    if w.is_cuda:
        _C.quantize_int8_cuda(*_launch(w.device), ptr(w), N, K, ptr(cb), ptr(scb))
    else:
        _C.quantize_int8(ptr(w), N, K, ptr(cb), ptr(scb))
    return cb, scb


def ref_quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.float()
    scb = w.abs().amax(dim=1)
    inv = torch.where(scb > 0, 127.0 / scb, torch.zeros_like(scb))
    cb = torch.round(w * inv[:, None]).clamp(-127, 127).to(torch.int8)
    return cb, scb


def _check_int8(cb: object, scb: object) -> tuple[int, int]:
    check_tensor("cb", cb, (torch.int8,), ndim=2, device=_op_device("cb", cb))
    check_tensor("scb", scb, (torch.float32,), ndim=1, device=cb.device)
    _check_shape("scb", scb, (cb.shape[0],))
    return cb.shape[0], cb.shape[1]


def dequantize_int8(cb: torch.Tensor, scb: torch.Tensor) -> torch.Tensor:
    N, K = _check_int8(cb, scb)
    if cb.is_cuda:
        return _cuda_dequantize("int8", cb, scb, N, K, 0)
    cb, scb = cb.contiguous(), scb.contiguous()
    out = torch.empty(N, K, dtype=torch.float32)
    _C.dequantize_int8(ptr(cb), ptr(scb), N, K, ptr(out))
    return out


def ref_dequantize_int8(cb: torch.Tensor, scb: torch.Tensor) -> torch.Tensor:
    return (cb.float() * scb[:, None]) * (1.0 / 127.0)


def dequantize_rows_int8(cb: torch.Tensor, scb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    N, K = _check_int8(cb, scb)
    cb, scb, rows = cb.contiguous(), scb.contiguous(), _row_ids(ids, N, cb.device)
    if cb.is_cuda:
        return _cuda_dequantize("int8", cb, scb, N, K, 0, rows).reshape(*ids.shape, K)
    out = torch.empty(rows.numel(), K, dtype=torch.float32)
    _C.dequantize_rows_int8(ptr(cb), ptr(scb), K, ptr(rows), rows.numel(), ptr(out))
    return out.reshape(*ids.shape, K)


def matmul_int8(x: torch.Tensor, cb: torch.Tensor, scb: torch.Tensor, bias: torch.Tensor | None = None,
                q8: bool | None = None) -> torch.Tensor:
    N, K = _check_int8(cb, scb)
    if cb.is_cuda:
        _no_q8_on_cuda(q8)
        return _cuda_matmul("int8", x, cb, scb, N, K, 0, bias)
    cb, scb = cb.contiguous(), scb.contiguous()
    return _run_matmul(_C.matmul_int8, x, K, N, bias, ptr(cb), ptr(scb), q8=q8)


def ref_matmul_int8(x, cb, scb, bias=None, q8=None) -> torch.Tensor:
    b = None if bias is None else bias.float()
    return F.linear(_ref_activations(x, q8), ref_dequantize_int8(cb, scb), b).to(x.dtype)


# nf4: packed uint8 [ceil(N*K/2)] over the flattened weight (first element in the high nibble),
# absmax float32 [ceil(N*K/blocksize)]; W = NF4_CODE[q] * absmax[block] (bitsandbytes NF4).

def quantize_nf4(w: torch.Tensor, blocksize: int = NF4_BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:
    w = _weight_f32("w", w)
    bs = _check_blocksize(blocksize)
    numel = w.numel()
    packed = torch.empty((numel + 1) // 2, dtype=torch.uint8, device=w.device)
    absmax = torch.empty((numel + bs - 1) // bs, dtype=torch.float32, device=w.device)
    if w.is_cuda:
        _C.quantize_nf4_cuda(*_launch(w.device), ptr(w), numel, bs, ptr(packed), ptr(absmax))
    else:
        _C.quantize_nf4(ptr(w), numel, bs, ptr(packed), ptr(absmax))
    return packed, absmax


def ref_quantize_nf4(w: torch.Tensor, blocksize: int = NF4_BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:
    flat = w.float().reshape(-1)
    numel = flat.numel()
    nb = (numel + blocksize - 1) // blocksize
    padded = torch.zeros(nb * blocksize + 1)
    padded[:numel] = flat
    blocks = padded[: nb * blocksize].view(nb, blocksize)
    absmax = blocks.abs().amax(dim=1)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    v = torch.where(absmax[:, None] > 0, blocks / safe[:, None], torch.zeros_like(blocks)).reshape(-1)
    code = nf4_code()
    mids = 0.5 * (code[:-1] + code[1:])
    q = (v[:, None] > mids[None, :]).sum(dim=1).to(torch.uint8)[:numel]
    if numel % 2:
        q = torch.cat([q, torch.zeros(1, dtype=torch.uint8)])
    return (q[0::2] << 4) | q[1::2], absmax


def _check_nf4(packed: object, absmax: object, shape: object, blocksize: object) -> tuple[int, int, int]:
    if not (isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 2):
        raise TypeError(f"shape must be (out_features, in_features), got {shape!r}")
    N, K = _dim("shape[0]", shape[0]), _dim("shape[1]", shape[1])
    bs = _check_blocksize(blocksize)
    check_tensor("packed", packed, (torch.uint8,), device=_op_device("packed", packed))
    check_tensor("absmax", absmax, (torch.float32,), ndim=1, device=packed.device)
    if packed.numel() != (N * K + 1) // 2:
        raise ValueError(f"packed must hold {(N * K + 1) // 2} bytes for shape {(N, K)}, got {packed.numel()}")
    _check_shape("absmax", absmax, ((N * K + bs - 1) // bs,))
    return N, K, bs


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int = NF4_BLOCKSIZE) -> torch.Tensor:
    N, K, bs = _check_nf4(packed, absmax, shape, blocksize)
    if packed.is_cuda:
        return _cuda_dequantize("nf4", packed, absmax, N, K, bs)
    packed, absmax = packed.contiguous(), absmax.contiguous()
    out = torch.empty(N, K, dtype=torch.float32)
    _C.dequantize_nf4(ptr(packed), ptr(absmax), N * K, bs, ptr(out))
    return out


def ref_dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int = NF4_BLOCKSIZE) -> torch.Tensor:
    N, K = shape
    p = packed.reshape(-1)
    q = torch.stack([p >> 4, p & 15], dim=1).reshape(-1)[: N * K].long()
    scale = absmax.repeat_interleave(blocksize)[: N * K]
    return (nf4_code().to(p.device)[q] * scale).reshape(N, K)


def dequantize_rows_nf4(packed, absmax, shape, ids, blocksize: int = NF4_BLOCKSIZE) -> torch.Tensor:
    N, K, bs = _check_nf4(packed, absmax, shape, blocksize)
    rows = _row_ids(ids, N, packed.device)
    if packed.is_cuda:
        return _cuda_dequantize("nf4", packed, absmax, N, K, bs, rows).reshape(*ids.shape, K)
    out = torch.empty(rows.numel(), K, dtype=torch.float32)
    packed, absmax = packed.contiguous(), absmax.contiguous()
    _C.dequantize_rows_nf4(ptr(packed), ptr(absmax), K, bs, ptr(rows), rows.numel(), ptr(out))
    return out.reshape(*ids.shape, K)


def matmul_nf4(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int = NF4_BLOCKSIZE,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    N, K, bs = _check_nf4(packed, absmax, shape, blocksize)
    if packed.is_cuda:
        return _cuda_matmul("nf4", x, packed, absmax, N, K, bs, bias)
    x2, lead = _activations(x, K)
    b = _bias(bias, N)
    y = torch.empty(x2.shape[0], N, dtype=torch.float32)
    packed, absmax = packed.contiguous(), absmax.contiguous()
    _C.matmul_nf4(ptr(x2), x2.shape[0], K, ptr(packed), ptr(absmax), N, bs,
                  0 if b is None else ptr(b), ptr(y))
    return y.reshape(*lead, N).to(x.dtype)


def ref_matmul_nf4(x, packed, absmax, shape, blocksize: int = NF4_BLOCKSIZE, bias=None) -> torch.Tensor:
    b = None if bias is None else bias.float()
    return F.linear(x.float(), ref_dequantize_nf4(packed, absmax, shape, blocksize), b).to(x.dtype)


# int4: packed uint8 [N, G*16], scales float32 [N, G], G = ceil(K/32); W = (q - 8) * d.

def quantize_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = _weight_f32("w", w)
    N, K = w.shape
    G = int4_groups(K)
    packed = torch.empty(N, G * 16, dtype=torch.uint8, device=w.device)
    scales = torch.empty(N, G, dtype=torch.float32, device=w.device)
    if w.is_cuda:
        _C.quantize_int4_cuda(*_launch(w.device), ptr(w), N, K, ptr(packed), ptr(scales))
    else:
        _C.quantize_int4(ptr(w), N, K, ptr(packed), ptr(scales))
    return packed, scales


def ref_quantize_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.float()
    N, K = w.shape
    G = int4_groups(K)
    v = torch.zeros(N, G * INT4_GROUP)
    v[:, :K] = w
    v = v.view(N, G, INT4_GROUP)
    idx = v.abs().argmax(dim=2, keepdim=True)
    d = torch.gather(v, 2, idx).squeeze(2) / -8.0
    inv = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
    q = torch.floor(v * inv[..., None] + 8.5).clamp(0, 15).to(torch.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    return packed.reshape(N, G * 16), d


def _check_int4(packed: object, scales: object, in_features: object) -> tuple[int, int]:
    K = _dim("in_features", in_features)
    check_tensor("packed", packed, (torch.uint8,), ndim=2, device=_op_device("packed", packed))
    check_tensor("scales", scales, (torch.float32,), ndim=2, device=packed.device)
    N, G = packed.shape[0], int4_groups(K)
    _check_shape("packed", packed, (N, G * 16))
    _check_shape("scales", scales, (N, G))
    return N, K


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, in_features: int) -> torch.Tensor:
    N, K = _check_int4(packed, scales, in_features)
    if packed.is_cuda:
        return _cuda_dequantize("int4", packed, scales, N, K, 0)
    out = torch.empty(N, K, dtype=torch.float32)
    packed, scales = packed.contiguous(), scales.contiguous()
    _C.dequantize_int4(ptr(packed), ptr(scales), N, K, ptr(out))
    return out


def ref_dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, in_features: int) -> torch.Tensor:
    N, G = scales.shape
    p = packed.view(N, G, 16)
    q = torch.cat([p & 15, p >> 4], dim=2).float() - 8.0
    return (q * scales[..., None]).reshape(N, G * INT4_GROUP)[:, :in_features]


def dequantize_rows_int4(packed, scales, in_features: int, ids) -> torch.Tensor:
    N, K = _check_int4(packed, scales, in_features)
    rows = _row_ids(ids, N, packed.device)
    if packed.is_cuda:
        return _cuda_dequantize("int4", packed, scales, N, K, 0, rows).reshape(*ids.shape, K)
    out = torch.empty(rows.numel(), K, dtype=torch.float32)
    packed, scales = packed.contiguous(), scales.contiguous()
    _C.dequantize_rows_int4(ptr(packed), ptr(scales), K, ptr(rows), rows.numel(), ptr(out))
    return out.reshape(*ids.shape, K)


def matmul_int4(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, in_features: int,
                bias: torch.Tensor | None = None, q8: bool | None = None) -> torch.Tensor:
    N, K = _check_int4(packed, scales, in_features)
    if packed.is_cuda:
        _no_q8_on_cuda(q8)
        return _cuda_matmul("int4", x, packed, scales, N, K, 0, bias)
    packed, scales = packed.contiguous(), scales.contiguous()
    return _run_matmul(_C.matmul_int4, x, K, N, bias, ptr(packed), ptr(scales), q8=q8)


def ref_matmul_int4(x, packed, scales, in_features: int, bias=None, q8=None) -> torch.Tensor:
    b = None if bias is None else bias.float()
    return F.linear(_ref_activations(x, q8), ref_dequantize_int4(packed, scales, in_features), b).to(x.dtype)


# ---- paged KV cache and attention ----
#
# A layer's cache is a pair of tensors k_cache, v_cache of shape (num_blocks, block_size,
# kv_heads, head_dim) in float32, bfloat16, float16 or int8; int8 caches carry float32 scales
# k_scale, v_scale of shape (num_blocks, block_size, kv_heads): value = int8 * scale, with
# scale = absmax / 127 over one token and head. A slot is block * block_size + offset.

KV_CACHE_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.int8: 3}


def _cache_args(k_cache, v_cache, k_scale, v_scale) -> tuple:
    check_tensor("k_cache", k_cache, tuple(KV_CACHE_DTYPES), ndim=4, device=_op_device("k_cache", k_cache))
    check_tensor("v_cache", v_cache, (k_cache.dtype,), ndim=4, device=k_cache.device)
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"k_cache and v_cache differ in shape: {tuple(k_cache.shape)} vs {tuple(v_cache.shape)}")
    num_blocks, block_size, kv_heads, head_dim = k_cache.shape
    if min(block_size, kv_heads, head_dim) == 0:
        raise ValueError(f"empty KV cache dimensions: {tuple(k_cache.shape)}")
    scales = (0, 0)
    if k_cache.dtype == torch.int8:
        for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
            if s is None:
                raise ValueError(f"an int8 KV cache needs {name}")
            check_tensor(name, s, (torch.float32,), ndim=3, device=k_cache.device)
            if tuple(s.shape) != (num_blocks, block_size, kv_heads):
                raise ValueError(f"{name} must have shape {(num_blocks, block_size, kv_heads)}, got {tuple(s.shape)}")
        scales = (ptr(k_scale), ptr(v_scale))
    elif k_scale is not None or v_scale is not None:
        raise ValueError("k_scale/v_scale belong to int8 KV caches only")
    return (ptr(k_cache), ptr(v_cache), *scales, KV_CACHE_DTYPES[k_cache.dtype], num_blocks * block_size,
            kv_heads, head_dim, block_size)


def _as_f32(name: str, t: object, shape_tail: tuple, device: str | torch.device = "cpu") -> torch.Tensor:
    check_tensor(name, t, (torch.float32, torch.bfloat16, torch.float16), ndim=1 + len(shape_tail), device=device)
    if tuple(t.shape[1:]) != shape_tail:
        raise ValueError(f"{name} must have shape (tokens, {', '.join(map(str, shape_tail))}), got {tuple(t.shape)}")
    return t.float().contiguous()


def _index(name: str, t: object, shape: tuple, dtype: torch.dtype,
           device: str | torch.device = "cpu") -> torch.Tensor:
    """An index array (slots, block tables, lengths). For a CUDA op it may sit on the CPU or on the
    op's device; the CUDA paths take both copies (_host_and_device)."""
    if isinstance(device, torch.device) and device.type == "cuda" and isinstance(t, torch.Tensor) \
            and t.device.type == "cpu":
        device = "cpu"
    check_tensor(name, t, (dtype,), ndim=len(shape), device=device)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return t.contiguous()


def _host_and_device(t: torch.Tensor, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The host copy (for argument checks) and the device copy of an index array. Every layer of a
    step passes the same CPU tensors, so the device copy is made once and kept on the tensor (keyed
    by its version counter: an in-place change makes a new copy)."""
    host = t.cpu().contiguous()
    if t.device == dev:
        return host, t.contiguous()
    memo = getattr(t, "_mpt_lite_device_copy", None)
    if memo is not None and memo[0] == t._version and memo[1].device == dev:
        return host, memo[1]
    copy = host.to(dev)
    t._mpt_lite_device_copy = (t._version, copy)
    return host, copy


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
                   v_scale: torch.Tensor | None = None) -> None:
    """Writes key/value (tokens, kv_heads, head_dim) into the cache at slot_mapping (tokens,) int64;
    a negative slot skips its token. In place."""
    cache = _cache_args(k_cache, v_cache, k_scale, v_scale)
    dev = k_cache.device
    tail = tuple(k_cache.shape[2:])
    key, value = _as_f32("key", key, tail, dev), _as_f32("value", value, tail, dev)
    if key.shape != value.shape:
        raise ValueError(f"key and value differ in shape: {tuple(key.shape)} vs {tuple(value.shape)}")
    slots = _index("slot_mapping", slot_mapping, (key.shape[0],), torch.int64, dev)
    if dev.type == "cuda":
        host, slots = _host_and_device(slots, dev)
        _C.write_kv_cache_cuda(*_launch(dev), ptr(key), ptr(value), key.shape[0], ptr(slots), ptr(host), *cache)
        return
    _C.write_kv_cache(ptr(key), ptr(value), key.shape[0], ptr(slots), *cache)


def _attention(decode: bool, query, k_cache, v_cache, block_tables, context_lens, query_start_loc, scale,
               slopes, k_scale, v_scale) -> torch.Tensor:
    cache = _cache_args(k_cache, v_cache, k_scale, v_scale)
    dev = k_cache.device
    kv_heads, head_dim = k_cache.shape[2:]
    check_tensor("query", query, (torch.float32, torch.bfloat16, torch.float16), ndim=3, device=dev)
    if query.shape[2] != head_dim:
        raise ValueError(f"query head_dim {query.shape[2]} differs from the cache's {head_dim}")
    num_heads = query.shape[1]
    if num_heads % kv_heads:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of the cache's kv_heads ({kv_heads})")
    q = query.float().contiguous()
    check_tensor("block_tables", block_tables, (torch.int32,), ndim=2,
                 device=block_tables.device if isinstance(block_tables, torch.Tensor) else "cpu")
    num_seqs = block_tables.shape[0]
    block_tables = _index("block_tables", block_tables, tuple(block_tables.shape), torch.int32, dev)
    lens = _index("context_lens", context_lens, (num_seqs,), torch.int32, dev)
    if decode:
        if q.shape[0] != num_seqs:
            raise ValueError(f"decode takes one query per sequence: {q.shape[0]} queries, {num_seqs} block tables")
        qsl_ptr = 0
    else:
        qsl = _index("query_start_loc", query_start_loc, (num_seqs + 1,), torch.int32, dev)
        if int(qsl[-1]) != q.shape[0]:
            raise ValueError(f"query_start_loc ends at {int(qsl[-1])}, query has {q.shape[0]} tokens")
        qsl_ptr = ptr(qsl)
    slopes_ptr = 0
    if slopes is not None:
        slopes = _index("slopes", slopes, (num_heads,), torch.float32, dev).to(dev)
        slopes_ptr = ptr(slopes)
    out = torch.empty_like(q)
    if num_seqs and dev.type == "cuda":
        bt_h, bt_d = _host_and_device(block_tables, dev)
        lens_h, lens_d = _host_and_device(lens, dev)
        qsl_h, qsl_d = _host_and_device(qsl, dev) if not decode else (None, None)
        _C.paged_attention_cuda(*_launch(dev), decode, ptr(q), ptr(out), q.shape[0], num_heads, num_seqs, ptr(bt_d),
                                ptr(bt_h), block_tables.shape[1], ptr(lens_d), ptr(lens_h),
                                0 if decode else ptr(qsl_d), 0 if decode else ptr(qsl_h), slopes_ptr, float(scale),
                                *cache)
    elif num_seqs:
        _C.paged_attention(decode, ptr(q), ptr(out), num_heads, num_seqs, ptr(block_tables), block_tables.shape[1],
                           ptr(lens), qsl_ptr, slopes_ptr, float(scale), *cache)
    return out


def paged_attention_decode(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           slopes: torch.Tensor | None = None, k_scale: torch.Tensor | None = None,
                           v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """One query per sequence, query (seqs, heads, head_dim), at position context_lens[s] - 1, over
    the keys its block_tables (seqs, max_blocks) int32 row names. Returns float32 (seqs, heads, head_dim)."""
    return _attention(True, query, k_cache, v_cache, block_tables, context_lens, None, scale, slopes, k_scale,
                      v_scale)


def paged_attention_prefill(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, context_lens: torch.Tensor,
                            query_start_loc: torch.Tensor, scale: float, slopes: torch.Tensor | None = None,
                            k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of the new tokens of each sequence: query (tokens, heads, head_dim) holds
    sequence s at rows query_start_loc[s]:query_start_loc[s+1], the last ones of its context_lens[s]
    tokens (a cached prefix plus these); their K/V must already be in the cache."""
    return _attention(False, query, k_cache, v_cache, block_tables, context_lens, query_start_loc, scale, slopes,
                      k_scale, v_scale)


def ref_quantize_kv_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., head_dim) float32 -> int8 values and (...) float32 scales, as the kernel stores them."""
    s = x.abs().amax(-1) / 127.0
    q = torch.where(s[..., None] > 0, torch.round(x / s[..., None]), torch.zeros_like(x)).clamp(-127, 127)
    return q.to(torch.int8), s


def ref_write_kv_cache(key, value, k_cache, v_cache, slot_mapping, k_scale=None, v_scale=None) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    for x, cache, scales in ((key, k_cache, k_scale), (value, v_cache, v_scale)):
        flat = cache.view(-1, *cache.shape[2:])
        x = x[keep].float()
        if cache.dtype == torch.int8:
            q, s = ref_quantize_kv_int8(x)
            flat[slots] = q
            scales.view(-1, scales.shape[-1])[slots] = s
        else:
            flat[slots] = x.to(cache.dtype)


def _ref_gather(cache, scales, table, ctx) -> torch.Tensor:
    bs = cache.shape[1]
    blocks = table[: (ctx + bs - 1) // bs].long()
    x = cache[blocks].float()
    if cache.dtype == torch.int8:
        x = x * scales[blocks][..., None]
    return x.reshape(-1, *cache.shape[2:])[:ctx]


def ref_paged_attention_prefill(query, k_cache, v_cache, block_tables, context_lens, query_start_loc, scale,
                                slopes=None, k_scale=None, v_scale=None) -> torch.Tensor:
    out = torch.empty(query.shape, dtype=torch.float32)
    heads, kv_heads = query.shape[1], k_cache.shape[2]
    for s in range(block_tables.shape[0]):
        q0, q1, ctx = int(query_start_loc[s]), int(query_start_loc[s + 1]), int(context_lens[s])
        k = _ref_gather(k_cache, k_scale, block_tables[s], ctx).repeat_interleave(heads // kv_heads, dim=1)
        v = _ref_gather(v_cache, v_scale, block_tables[s], ctx).repeat_interleave(heads // kv_heads, dim=1)
        q = query[q0:q1].float()
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        q_pos = torch.arange(ctx - (q1 - q0), ctx).view(-1, 1)
        rel = (torch.arange(ctx).view(1, -1) - q_pos).float()
        if slopes is not None:
            scores = scores + slopes.view(-1, 1, 1) * rel
        scores = scores.masked_fill(rel > 0, float("-inf"))
        out[q0:q1] = torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v)
    return out


def ref_paged_attention_decode(query, k_cache, v_cache, block_tables, context_lens, scale, slopes=None,
                               k_scale=None, v_scale=None) -> torch.Tensor:
    qsl = torch.arange(query.shape[0] + 1, dtype=torch.int32)
    return ref_paged_attention_prefill(query, k_cache, v_cache, block_tables, context_lens, qsl, scale, slopes,
                                       k_scale, v_scale)
