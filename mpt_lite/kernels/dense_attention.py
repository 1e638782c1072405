"""Causal ALiBi attention of sequences that have no cached prefix, over their own new tokens. On a GPU
by torch's scaled_dot_product_attention (fused attention kernels): the GPU's fast path for a fresh
prompt, beside the paged prefill kernel that computes the same function from the cache. On a CPU by
that paged kernel, over a cache made of the tokens' own k/v: forward()'s prompt attention."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .attention_ops import paged_attention_prefill

_MASK_BYTES = 256 << 20  # queries per call are chunked so one additive mask stays under this


def causal_alibi_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: Sequence[int],
                           scale: float, slopes: torch.Tensor | None, *,
                           num_threads: int | None = None) -> torch.Tensor:
    """q (tokens, heads, D), k/v (tokens, kv_heads, D) of whole sequences back to back (lengths
    seq_lens); query i of a sequence sees keys 0..i with score q.k * scale + slope_h * (j - i).
    Returns (tokens, heads, D) float32, as ref_paged_attention_prefill over a cache holding only
    these tokens."""
    tokens, heads, dim = q.shape
    kv_heads = k.shape[1]
    if sum(seq_lens) != tokens or k.shape != v.shape or k.shape[0] != tokens or heads % kv_heads:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match "
                         f"sequences of lengths {list(seq_lens)}")
    if not q.is_cuda:
        return _paged_prefill(q, k, v, seq_lens, scale, slopes, num_threads)
    return _sdpa(q, k, v, seq_lens, scale, slopes)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: Sequence[int], scale: float,
          slopes: torch.Tensor | None) -> torch.Tensor:
    """The GPU path: torch's scaled_dot_product_attention per sequence, the ALiBi bias and the causal
    mask as one additive mask (chunks of queries keep it under _MASK_BYTES)."""
    tokens, heads, dim = q.shape
    kv_heads = k.shape[1]
    out = torch.empty(tokens, heads, dim, dtype=torch.float32, device=q.device)
    start = 0
    for n in seq_lens:
        qs = q[start:start + n].float().transpose(0, 1)  # (heads, n, D)
        ks = k[start:start + n].float().transpose(0, 1)
        vs = v[start:start + n].float().transpose(0, 1)
        if kv_heads != heads:
            ks = ks.repeat_interleave(heads // kv_heads, dim=0)
            vs = vs.repeat_interleave(heads // kv_heads, dim=0)
        pos = torch.arange(n, device=q.device, dtype=torch.float32)
        rows = max(1, _MASK_BYTES // max(1, 4 * heads * n))
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            dist = pos[None, :] - pos[r0:r1, None]  # (queries, keys): j - i
            mask = torch.zeros(heads, r1 - r0, n, device=q.device) if slopes is None \
                else slopes.float().view(-1, 1, 1) * dist
            mask = mask.masked_fill(dist > 0, float("-inf"))
            # 4-D (batch of one): torch's fused attention kernels take no 3-D inputs (math fallback)
            o = F.scaled_dot_product_attention(qs[None, :, r0:r1], ks[None], vs[None], attn_mask=mask[None],
                                               scale=scale)
            out[start + r0:start + r1] = o[0].transpose(0, 1)
        start += n
    return out


_BLOCK = 16  # tokens a block of the cache built by _paged_prefill


def _paged_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: Sequence[int], scale: float,
                   slopes: torch.Tensor | None, num_threads: int | None) -> torch.Tensor:
    """The CPU path: the new tokens' k/v as a paged cache of their own (one sequence whose length is a
    multiple of the block size is used in place), then the paged prefill kernel, which on a CPU is
    faster than torch's attention with an additive ALiBi mask (docs/benchmarks.md)."""
    kv_heads, dim = k.shape[1:]
    blocks = [(n + _BLOCK - 1) // _BLOCK for n in seq_lens]
    if len(seq_lens) == 1 and seq_lens[0] % _BLOCK == 0:
        kc = k.float().contiguous().view(blocks[0], _BLOCK, kv_heads, dim)
        vc = v.float().contiguous().view(blocks[0], _BLOCK, kv_heads, dim)
    else:
        kc = torch.zeros(sum(blocks) * _BLOCK, kv_heads, dim)
        vc = torch.zeros_like(kc)
        tok = blk = 0
        for n, nb in zip(seq_lens, blocks):
            kc[blk * _BLOCK: blk * _BLOCK + n] = k[tok: tok + n]
            vc[blk * _BLOCK: blk * _BLOCK + n] = v[tok: tok + n]
            tok, blk = tok + n, blk + nb
        kc, vc = kc.view(-1, _BLOCK, kv_heads, dim), vc.view(-1, _BLOCK, kv_heads, dim)
    tables = torch.zeros(len(seq_lens), max(blocks, default=1), dtype=torch.int32)
    first = 0
    for s, nb in enumerate(blocks):
        tables[s, :nb] = torch.arange(first, first + nb, dtype=torch.int32)
        first += nb
    lens = torch.tensor(list(seq_lens), dtype=torch.int32)
    starts = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    starts[1:] = torch.cumsum(lens, 0)
    return paged_attention_prefill(q, kc, vc, tables, lens, starts, scale, slopes, num_threads=num_threads)
