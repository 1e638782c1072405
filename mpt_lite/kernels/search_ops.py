"""Quantizers with searched block scales (least squared error per block, csrc/cpu/quant_search.cpp):
same outputs and layouts as quantize_int4 / quantize_nf4, usually 10-15% less weight error.
CUDA tensors use the plain-torch reference on their device, which the CPU kernel equals bit for bit."""
from __future__ import annotations

import torch

from .checks import check_blocksize, check_threads, ptr, weight_f32
from .extension import _C
from .layouts import INT4_GROUP, INT4_SCALE_DTYPE, NF4_BLOCKSIZE, check_int4_group, int4_groups
from .reference import ref_search_quantize_int4, ref_search_quantize_nf4


def search_quantize_int4(w: torch.Tensor, num_threads: int | None = None, *,
                         group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (packed uint8 [N, ceil(K/32)*16], scales float16 [N, ceil(K/group)]); W = (q - 8) * d."""
    group = check_int4_group(group)
    w = weight_f32("w", w)
    if w.is_cuda:
        return ref_search_quantize_int4(w, group)
    N, K = w.shape
    packed = torch.empty(N, int4_groups(K) * 16, dtype=torch.uint8)
    scales = torch.empty(N, int4_groups(K, group), dtype=INT4_SCALE_DTYPE)
    _C.search_quantize_int4(w=ptr(w), n=N, k=K, packed=ptr(packed), scales=ptr(scales), group=group,
                            num_threads=check_threads(num_threads))
    return packed, scales


def search_quantize_nf4(w: torch.Tensor, blocksize: int = NF4_BLOCKSIZE,
                        num_threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (packed uint8 [ceil(N*K/2)], absmax float32 [ceil(N*K/blocksize)]) in bitsandbytes'
    NF4 layout; absmax holds each block's chosen scale: W = NF4_CODE[q] * absmax."""
    w = weight_f32("w", w)
    bs = check_blocksize(blocksize)
    if w.is_cuda:
        return ref_search_quantize_nf4(w, bs)
    numel = w.numel()
    packed = torch.empty((numel + 1) // 2, dtype=torch.uint8)
    absmax = torch.empty((numel + bs - 1) // bs, dtype=torch.float32)
    _C.search_quantize_nf4(w=ptr(w), numel=numel, blocksize=bs, packed=ptr(packed), absmax=ptr(absmax),
                           num_threads=check_threads(num_threads))
    return packed, absmax
