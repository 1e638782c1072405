"""Causal ALiBi attention of sequences that have no cached prefix, over their own new tokens, by
torch's scaled_dot_product_attention (fused attention kernels on a GPU). The paged prefill kernel
computes the same function from the cache; this is the GPU's fast path for a fresh prompt."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

_MASK_BYTES = 256 << 20  # queries per call are chunked so one additive mask stays under this


def causal_alibi_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: Sequence[int],
                           scale: float, slopes: torch.Tensor | None) -> torch.Tensor:
    """q (tokens, heads, D), k/v (tokens, kv_heads, D) of whole sequences back to back (lengths
    seq_lens); query i of a sequence sees keys 0..i with score q.k * scale + slope_h * (j - i).
    Returns (tokens, heads, D) float32, as ref_paged_attention_prefill over a cache holding only
    these tokens."""
    tokens, heads, dim = q.shape
    kv_heads = k.shape[1]
    if sum(seq_lens) != tokens or k.shape != v.shape or k.shape[0] != tokens or heads % kv_heads:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match "
                         f"sequences of lengths {list(seq_lens)}")
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
