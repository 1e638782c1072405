"""Plain-torch references of every kernel op: each mirrors exactly what its kernel computes
(activation quantization included), so that tests compare every kernel variant against it and
model-level code can fall back on it. Imports nothing compiled."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layouts import (INT4_GROUP, NF4_BLOCKSIZE, NF4_INT8, NF4_INT_MAX, Q8_BLOCK, int4_group_of, int4_groups,
                      int4_half_scales, nf4_code, nf4_q8_ok, use_q8)

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


def _ref_activations(x: torch.Tensor, q8: object) -> torch.Tensor:
    """int8 / int4 activations as their kernels see them (q8 per layouts.use_q8, with GEMM tiles)."""
    rows = x.numel() // max(x.shape[-1], 1) if x.dim() else 1
    return ref_dequantize_q8(x) if use_q8(q8, rows, x.shape[-1] if x.dim() else 1) else x.float()


def ref_quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.float()
    scb = w.abs().amax(dim=1)
    # a tensor divided, as the kernel's 127.0f / amax (torch's `127.0 / scb` is 127 x reciprocal(scb), which
    # differs in the last bit now and then: a code off by one at an exact .5)
    inv = torch.where(scb > 0, torch.full_like(scb, 127.0) / scb, torch.zeros_like(scb))
    cb = torch.round(w * inv[:, None]).clamp(-127, 127).to(torch.int8)
    return cb, scb


def ref_dequantize_int8(cb: torch.Tensor, scb: torch.Tensor) -> torch.Tensor:
    return (cb.float() * scb[:, None]) * (1.0 / 127.0)


# bf16=True (ref_matmul_int8 / _nf4 / _int4): what the AMX tiles compute (quant_ops.bf16_operands says
# when they do): ref_matmul_bf16_operands of the decoded weight (int8: of its codes, times scb / 127).

def ref_matmul_int8(x, cb, scb, bias=None, q8=None, bf16=False) -> torch.Tensor:
    b = None if bias is None else bias.float()
    if bf16:
        return ref_matmul_bf16_operands(x, cb.float(), b, scb.float() * (1.0 / 127.0)).to(x.dtype)
    return F.linear(_ref_activations(x, q8), ref_dequantize_int8(cb, scb), b).to(x.dtype)


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


def ref_dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int = NF4_BLOCKSIZE) -> torch.Tensor:
    N, K = shape
    p = packed.reshape(-1)
    q = torch.stack([p >> 4, p & 15], dim=1).reshape(-1)[: N * K].long()
    scale = absmax.repeat_interleave(blocksize)[: N * K]
    return (nf4_code().to(p.device)[q] * scale).reshape(N, K)


def ref_dequantize_nf4_int8(packed: torch.Tensor, absmax: torch.Tensor, shape,
                            blocksize: int = NF4_BLOCKSIZE) -> torch.Tensor:
    """The weight nf4's integer path uses: NF4_INT8[q] * (absmax * (1/NF4_INT_MAX)), in float32."""
    N, K = shape
    p = packed.reshape(-1)
    q = torch.stack([p >> 4, p & 15], dim=1).reshape(-1)[: N * K].long()
    scale = (absmax.float() * (1.0 / NF4_INT_MAX)).repeat_interleave(blocksize)[: N * K]
    return (torch.tensor(NF4_INT8, dtype=torch.float32, device=p.device)[q] * scale).reshape(N, K)


def ref_matmul_nf4(x, packed, absmax, shape, blocksize: int = NF4_BLOCKSIZE, bias=None, q8=None,
                   bf16=False) -> torch.Tensor:
    """q8 per layouts.use_q8 (as int8 / int4) and where nf4_q8_ok: q8 activations against the int8
    codes (llama.cpp's IQ4_NL scheme, csrc/cpu/quant_formats.h); otherwise float32 activations
    against the float codes."""
    b = None if bias is None else bias.float()
    if bf16:
        return ref_matmul_bf16_operands(x, ref_dequantize_nf4(packed, absmax, shape, blocksize), b).to(x.dtype)
    rows = x.numel() // max(x.shape[-1], 1) if x.dim() else 1
    if use_q8(q8, rows, shape[1]) and nf4_q8_ok(shape[1], blocksize):
        return F.linear(ref_dequantize_q8(x), ref_dequantize_nf4_int8(packed, absmax, shape, blocksize), b).to(x.dtype)
    return F.linear(x.float(), ref_dequantize_nf4(packed, absmax, shape, blocksize), b).to(x.dtype)


def _int4_pack(q: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """codes q (0..15) [N, >= ceil(K/32)*32] -> packed [N, ceil(K/32)*16] (low nibble k, high nibble k + 16)."""
    G = int4_groups(K)
    q = q.reshape(N, -1)[:, :G * INT4_GROUP].reshape(N, G, INT4_GROUP)
    return (q[..., :16] | (q[..., 16:] << 4)).reshape(N, G * 16)


def _group_scales(w: torch.Tensor, group: int, levels: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What csrc/cpu/quant_formats.h group_scale computes for each group of `group` along K: (the groups [N, C,
    group] zero-padded, the stored half scales [N, C] = signed absmax / -levels, 1 / the rounded scale or 0)."""
    w = w.float()
    N, K = w.shape
    C = int4_groups(K, group)
    v = torch.zeros(N, C * group)
    v[:, :K] = w
    v = v.view(N, C, group)
    idx = v.abs().argmax(dim=2, keepdim=True)
    h = int4_half_scales(torch.gather(v, 2, idx).squeeze(2) / -levels)  # stored half; codes use it rounded
    d = h.float()
    inv = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
    return v, h, inv


def ref_quantize_int4(w: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    v, h, inv = _group_scales(w, group, 8.0)
    q = torch.floor(v * inv[..., None] + 8.5).clamp(0, 15).to(torch.uint8)
    return _int4_pack(q, *w.shape), h


def ref_dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, in_features: int) -> torch.Tensor:
    """Any group: the scales' columns say it (layouts.int4_group_of)."""
    N, G = packed.shape[0], packed.shape[1] // 16
    p = packed.view(N, G, 16)
    q = torch.cat([p & 15, p >> 4], dim=2).float().reshape(N, G * INT4_GROUP) - 8.0
    group = int4_group_of(in_features, scales.shape[1]) or INT4_GROUP
    d = scales.float().repeat_interleave(group, dim=1)[:, :G * INT4_GROUP]  # half scales widen exactly
    return (q * d)[:, :in_features]


def ref_quantize_int6(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (codes uint8 [N, G*24], scales float16 [N, G]), G = ceil(K / 32) (csrc/cpu/quant_int6.h):
    d = half(signed absmax / -32), q = round_half_even(clamp(w * (1/d), -32, 31)) + 32."""
    v, h, inv = _group_scales(w, 32, 32.0)
    N, G = h.shape
    q = torch.nan_to_num(torch.round((v * inv[..., None]).clamp(-32, 31)), nan=0.0).to(torch.int64) + 32
    low = (q[..., :16] & 15) | ((q[..., 16:] & 15) << 4)
    high = ((q >> 4).view(N, G, 4, 8) << (2 * torch.arange(4)).view(1, 1, 4, 1)).sum(dim=2)
    return torch.cat([low, high], dim=2).to(torch.uint8).view(N, G * 24), h


def ref_dequantize_int6(codes: torch.Tensor, scales: torch.Tensor, in_features: int) -> torch.Tensor:
    N, G = codes.shape[0], codes.shape[1] // 24
    p = codes.view(N, G, 24).to(torch.int64)
    low = torch.cat([p[..., :16] & 15, p[..., :16] >> 4], dim=2)
    high = (p[..., None, 16:] >> (2 * torch.arange(4)).view(1, 1, 4, 1)) & 3  # [N, G, s, i]: k = 8s + i
    q = low | (high.reshape(N, G, 32) << 4)
    return ((q.float() - 32.0) * scales.float()[..., None]).view(N, G * 32)[:, :in_features]


def ref_matmul_int6(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, in_features: int,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """x always as q8 blocks (the int6 kernels have no float-activation path)."""
    b = None if bias is None else bias.float()
    return F.linear(ref_dequantize_q8(x), ref_dequantize_int6(codes, scales, in_features), b).to(x.dtype)


def ref_rows8_units(S: int, G: int) -> torch.Tensor:
    """[S, G]: the unit (8 rows x one group or block) where the rows8 layouts (csrc/cpu/quant_formats.h) keep
    set n8 at step g: sets interleaved by 4 per step within a tile of 4 sets (fewer in the last tile)."""
    n8 = torch.arange(S)[:, None]
    t0 = n8 // 4 * 4
    ng = (S - t0).clamp(max=4)
    return t0 * G + torch.arange(G)[None, :] * ng + (n8 - t0)


def ref_int4_from_rows8(packed: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The row layout of int4 codes and scales held in the rows8 layout (csrc/cpu/quant_formats.h):
    per 8 rows and unit of 32 k, at its unit, vector q's lane r holds row r's bytes 4q..4q+3 of that unit; the
    8 rows' scales side by side per group, at the units of the C groups (C = G where the group is 32)."""
    N, C = scales.shape
    G = packed.shape[1] // 16
    u = ref_rows8_units(N // 8, G)
    p = packed.reshape(-1, 128)[u].reshape(N // 8, G, 4, 8, 4).permute(0, 3, 1, 2, 4).reshape(N, G * 16)
    s = scales.reshape(-1, 8)[ref_rows8_units(N // 8, C)].permute(0, 2, 1).reshape(N, C)
    return p.contiguous(), s.contiguous()


def ref_int8_from_rows8(cb: torch.Tensor) -> torch.Tensor:
    """The row layout of int8 codes held in the rows8 layout (csrc/cpu/quant_formats.h): per 8 rows and group
    of 32 k, at its unit of 256 bytes, vector q's lane r holds row r's codes 4q..4q+3 of that group."""
    N, K = cb.shape
    G = K // 32
    u = ref_rows8_units(N // 8, G)
    return cb.reshape(-1, 256)[u].reshape(N // 8, G, 8, 8, 4).permute(0, 3, 1, 2, 4).reshape(N, K).contiguous()


def ref_nf4_from_rows8(packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' layout of nf4 codes and absmax held in the rows8 layout (csrc/cpu/quant_formats.h): the
    codes in int4's rows8 order, the 8 rows' absmax side by side per block, at the units of the C blocks."""
    N, K = shape
    G, C = K // 32, K // blocksize
    u = ref_rows8_units(N // 8, G)
    v = packed.reshape(-1, 128)[u].reshape(N // 8, G, 4, 8, 4).permute(0, 3, 1, 2, 4).reshape(N, G, 16)
    codes = torch.cat([v & 15, v >> 4], dim=2).reshape(-1)  # element n*K + k, row layout
    p = (codes[0::2] << 4) | codes[1::2]
    a = absmax.reshape(-1, 8)[ref_rows8_units(N // 8, C)].permute(0, 2, 1).reshape(-1)
    return p.contiguous(), a.contiguous()


def ref_matmul_int4(x, packed, scales, in_features: int, bias=None, q8=None, bf16=False) -> torch.Tensor:
    b = None if bias is None else bias.float()
    if bf16:
        return ref_matmul_bf16_operands(x, ref_dequantize_int4(packed, scales, in_features), b).to(x.dtype)
    return F.linear(_ref_activations(x, q8), ref_dequantize_int4(packed, scales, in_features), b).to(x.dtype)


# ---- searched block scales (csrc/cpu/quant_search.cpp) ----
# Each block's scale is picked for the least squared error, as llama.cpp's k-quant / IQ4_NL
# quantizers pick it (make_qx_quants): every trial scale around absmax / qmax gives codes (nearest
# level); the least-squares scale of codes c, sum(x*c) / sum(c*c), is the best they admit and
# removes sum(x*c)**2 / sum(c*c) of the block's sum(x*x); the codes removing the most win (the
# first on ties), are rounded once more at their least-squares scale, and the scale is refit.
# int4 stores that scale as half: it is rounded first and the codes assigned once more for the
# rounded scale, so the stored (codes, scale) pair is what dequantizes. The
# trial at exactly absmax / qmax is the absmax quantizer's, so the result is never worse than it
# beyond rounding. Codes keep the absmax kernels' layouts (nf4's absmax field holds the scale).
# Float32 throughout; sums are pairwise over the block zero-padded to a power of two, in the
# kernel's order, so kernel and reference agree bit for bit.
INT4_TRIALS = (7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0)  # divisors of the signed absmax (qmax 8)
NF4_TRIALS = (1.0, 1.1, 1.2)                        # multipliers of 1 / absmax


def _tree_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim (a power of two) as the kernel's tree_sum: a[j] += a[j + n/2], halving."""
    while t.shape[-1] > 1:
        h = t.shape[-1] // 2
        t = t[..., :h] + t[..., h:]
    return t[..., 0]


def _ls_fit(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(least-squares scale, error removed) per block of code values c; 0 where every code is 0."""
    sumlx, suml2 = _tree_sum(x * c), _tree_sum(c * c)
    ok = suml2 > 0
    scale = torch.where(ok, sumlx / torch.where(ok, suml2, torch.ones_like(suml2)), torch.zeros_like(sumlx))
    return scale, torch.where(ok, scale * sumlx, torch.zeros_like(sumlx))


def _pick_first_best(gain: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    best, best_gain = levels[0], gain[0]
    for t in range(1, gain.shape[0]):  # strictly greater: the first trial wins ties
        better = gain[t] > best_gain
        best = torch.where(better[:, None], levels[t], best)
        best_gain = torch.where(better, gain[t], best_gain)
    return best


def _inverse(s: torch.Tensor) -> torch.Tensor:
    return torch.where(s != 0, 1.0 / torch.where(s != 0, s, torch.ones_like(s)), torch.zeros_like(s))


def _int4_levels(x: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    return torch.round((x * inv).clamp(-8, 7))


def ref_search_quantize_int4(w: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """int4 with searched group scales, in quantize_int4's layout: W = (q - 8) * d, one d per `group` k."""
    w = w.float()
    N, K = w.shape
    C = int4_groups(K, group)
    x = torch.zeros(N * C, group, device=w.device)
    x.view(N, C * group)[:, :K] = w
    m = torch.gather(x, 1, x.abs().argmax(1, keepdim=True))  # signed absmax, first on ties
    safe = torch.where(m != 0, m, torch.ones_like(m))
    inv = torch.stack([torch.where(m != 0, torch.full_like(m, -t) / safe, torch.zeros_like(m)) for t in INT4_TRIALS])
    levels = _int4_levels(x, inv)
    levels = _pick_first_best(_ls_fit(x, levels)[1], levels)
    levels = _int4_levels(x, _inverse(_ls_fit(x, levels)[0])[:, None])
    h = int4_half_scales(_ls_fit(x, levels)[0])  # refit, round to the stored half, codes for that scale
    levels = _int4_levels(x, _inverse(h.float())[:, None])
    return _int4_pack((levels + 8).to(torch.uint8), N, K), h.view(N, C)


def _nf4_codes(x: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    code = nf4_code().to(x.device)
    return torch.bucketize(x * inv, 0.5 * (code[:-1] + code[1:]))  # midpoints strictly below


def ref_search_quantize_nf4(w: torch.Tensor, blocksize: int = NF4_BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """nf4 with searched block scales, in quantize_nf4's (bitsandbytes') layout: W = NF4_CODE[q] * absmax."""
    flat = w.float().reshape(-1)
    numel = flat.numel()
    nb = (numel + blocksize - 1) // blocksize
    width = 1 << (blocksize - 1).bit_length()
    blocks = torch.zeros(nb * blocksize, device=w.device)
    blocks[:numel] = flat
    x = torch.zeros(nb, width, device=w.device)
    x[:, :blocksize] = blocks.view(nb, blocksize)
    code = nf4_code().to(w.device)
    inv = _inverse(x.abs().amax(1, keepdim=True))
    q = torch.stack([_nf4_codes(x, torch.tensor(t, device=w.device) * inv) for t in NF4_TRIALS])
    q = _pick_first_best(_ls_fit(x, code[q])[1], q)
    q = _nf4_codes(x, _inverse(_ls_fit(x, code[q])[0])[:, None])
    s, _ = _ls_fit(x, code[q])
    q = q[:, :blocksize].reshape(-1)[:numel].to(torch.uint8)
    if numel % 2:
        q = torch.cat([q, torch.zeros(1, dtype=torch.uint8, device=q.device)])
    return (q[0::2] << 4) | q[1::2], s


def ref_quantize_kv_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., head_dim) float32 -> int8 values and (...) float32 scales, as the kernel stores them."""
    s = x.abs().amax(-1) / 127.0
    q = torch.where(s[..., None] > 0, torch.round(x / s[..., None]), torch.zeros_like(x)).clamp(-127, 127)
    return q.to(torch.int8), s


def ref_quantize_kv_q4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., head_dim) float32 -> 4-bit KV codes (..., head_dim // 2) uint8 and scales (..., head_dim // 32)
    float32, as the kernel stores them (csrc/cpu/attention.h): per group of 32 values d = m / -8 for m the
    value of largest magnitude, code = min(15, floor(x / d + 8.5)); byte j of a group = code j | code j+16 << 4."""
    g = x.float().reshape(*x.shape[:-1], -1, 32)
    m = g.gather(-1, g.abs().argmax(-1, keepdim=True))
    d = m / -8.0
    codes = torch.where(d != 0, torch.floor(g / d + 8.5).clamp(max=15), torch.full_like(g, 8)).to(torch.uint8)
    packed = codes[..., :16] | (codes[..., 16:] << 4)
    return packed.reshape(*x.shape[:-1], -1), d.squeeze(-1)


def ref_dequantize_kv_q4(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float32 values of 4-bit KV codes (..., head_dim // 2) with their scales (..., head_dim // 32)."""
    b = codes.reshape(*codes.shape[:-1], -1, 16)
    c = torch.cat([b & 15, b >> 4], dim=-1).float() - 8.0
    return (c * scales[..., None]).reshape(*codes.shape[:-1], -1)


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
        elif cache.dtype == torch.uint8:
            q, s = ref_quantize_kv_q4(x)
            flat[slots] = q
            scales.view(-1, *scales.shape[2:])[slots] = s
        else:
            flat[slots] = x.to(cache.dtype)


def ref_round_query_q4(q: torch.Tensor) -> torch.Tensor:
    """Queries against a 4-bit KV cache as every kernel uses them (csrc/cpu/attention_q4_query.h): rounded
    to int8 per group of 32 values of a head (d = amax / 127, round(q / d) * d; zeros where d is 0), as
    llama.cpp rounds the query to Q8_0 for its q4_0 keys."""
    g = q.float().reshape(*q.shape[:-1], -1, 32)
    d = g.abs().amax(-1, keepdim=True) / 127
    r = torch.where(d != 0, torch.round(g / torch.where(d != 0, d, 1)), torch.zeros_like(g))
    return (r * d).reshape(q.shape)


def _ref_gather(cache, scales, table, ctx) -> torch.Tensor:
    bs = cache.shape[1]
    blocks = table[: (ctx + bs - 1) // bs].long()
    if cache.dtype == torch.uint8:
        x = ref_dequantize_kv_q4(cache[blocks], scales[blocks])
    else:
        x = cache[blocks].float()
    if cache.dtype == torch.int8:
        x = x * scales[blocks][..., None]
    return x.reshape(-1, *x.shape[2:])[:ctx]


def ref_paged_attention_prefill(query, k_cache, v_cache, block_tables, context_lens, query_start_loc, scale,
                                slopes=None, k_scale=None, v_scale=None) -> torch.Tensor:
    out = torch.empty(query.shape, dtype=torch.float32)
    heads, kv_heads = query.shape[1], k_cache.shape[2]
    for s in range(block_tables.shape[0]):
        q0, q1, ctx = int(query_start_loc[s]), int(query_start_loc[s + 1]), int(context_lens[s])
        k = _ref_gather(k_cache, k_scale, block_tables[s], ctx).repeat_interleave(heads // kv_heads, dim=1)
        v = _ref_gather(v_cache, v_scale, block_tables[s], ctx).repeat_interleave(heads // kv_heads, dim=1)
        q = query[q0:q1].float()
        if k_cache.dtype == torch.uint8:
            q = ref_round_query_q4(q)
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
