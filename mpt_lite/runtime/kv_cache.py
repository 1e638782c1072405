"""The paged KV cache's tensors: per layer a pool of blocks for K and V (bookkeeping in
block_manager.py), and PagedStep / PagedLayer, through which the model's layers read and write
them (the model's PagedBatch / PagedAttention interface)."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import kernels
from ..model.attention_backend import PagedAttention, PagedBatch
from .block_manager import DEFAULT_BLOCK_SIZE, BlockManager, CacheExhaustedError, SeqBlocks


# KV dtypes an engine takes: the kernels' cache dtypes, with torch.quint4x2 naming the 4-bit cache
# (kernels.attention_ops: uint8 codes, two a byte, and a float32 scale per 32 values; CPU only).
Q4_KV_DTYPE = torch.quint4x2
KV_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int8, Q4_KV_DTYPE)


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the cache tensors for an engine's KV dtype (the 4-bit cache keeps uint8 codes)."""
    return torch.uint8 if dtype == Q4_KV_DTYPE else dtype


class PagedKVCache(BlockManager):
    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, *, block_size: int = DEFAULT_BLOCK_SIZE,
                 num_blocks: int | None = None, max_bytes: int | None = None,
                 dtype: torch.dtype = torch.float32, prefix_caching: bool = True,
                 device: torch.device | str = "cpu") -> None:
        if dtype not in KV_DTYPES:
            raise TypeError(f"KV cache dtype must be one of {', '.join(map(str, KV_DTYPES))} (quint4x2: 4-bit), "
                            f"got {dtype}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        if dtype == Q4_KV_DTYPE and torch.device(device).type != "cpu":
            raise ValueError("a 4-bit KV cache (quint4x2) runs on the CPU only: use int8 or a float KV dtype on the GPU")
        self.n_layers, self.kv_heads, self.head_dim, self.dtype = n_layers, kv_heads, head_dim, dtype
        self.bytes_per_block = self.block_bytes(n_layers, kv_heads, head_dim, block_size, dtype)
        if (num_blocks is None) == (max_bytes is None):
            raise ValueError("give the KV cache budget as exactly one of num_blocks and max_bytes")
        if max_bytes is not None:
            num_blocks = int(max_bytes) // self.bytes_per_block
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise CacheExhaustedError(
                f"the KV cache budget holds no block (one block of {block_size} tokens needs "
                f"{self.bytes_per_block} bytes over {n_layers} layers)")
        super().__init__(num_blocks, block_size, prefix_caching)
        storage = storage_dtype(dtype)
        shape, scales = kernels.cache_shapes(num_blocks, block_size, kv_heads, head_dim, storage)
        self.device = torch.device(device)
        # torch.empty: pages are committed by the OS only when written, so a large budget is cheap
        # (on a GPU the whole budget is allocated at once).
        self.k = [torch.empty(shape, dtype=storage, device=self.device) for _ in range(n_layers)]
        self.v = [torch.empty(shape, dtype=storage, device=self.device) for _ in range(n_layers)]
        if scales is not None:
            self.k_scale = [torch.empty(scales, device=self.device) for _ in range(n_layers)]
            self.v_scale = [torch.empty(scales, device=self.device) for _ in range(n_layers)]
        else:
            self.k_scale = self.v_scale = [None] * n_layers
        # Float caches on the CPU keep each key row's largest |value| (written with the row), so that
        # attention can skip the blocks ALiBi makes negligible, as it does with the scales of int8 caches.
        bounds = scales is None and self.device.type == "cpu"
        self.k_bound = [torch.empty(shape[:3], device=self.device) if bounds else None for _ in range(n_layers)]

    @staticmethod
    def block_bytes(n_layers: int, kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype) -> int:
        """Bytes of one block over every layer: K and V with their scales, what a budget counts. A float
        cache on the CPU also keeps 4 bytes a token and kv head of key bounds (0.4% of float32 K and V at
        head_dim 128) beside the budget."""
        storage = storage_dtype(dtype)
        shape, scales = kernels.cache_shapes(1, block_size, kv_heads, head_dim, storage)
        per_layer = math.prod(shape) * torch.empty((), dtype=storage).element_size()
        return 2 * n_layers * (per_layer + (4 * math.prod(scales) if scales is not None else 0))

    def layer(self, i: int) -> tuple:
        return self.k[i], self.v[i], self.k_scale[i], self.v_scale[i]


class PagedStep(PagedBatch):
    """What one forward pass over the paged cache needs: for each scheduled sequence, its new
    tokens' slots, its block table and context length. Layers call `attend` through `layer(i)`.

    starts/ends count the sequence's tokens; after a context shift the fields count only the kept
    ones (a token's position is its place in the block table), which is what makes ALiBi measure
    distances over the kept positions."""

    def __init__(self, cache: PagedKVCache, seqs: Sequence[SeqBlocks], starts: Sequence[int],
                 ends: Sequence[int], num_threads: int | None = None) -> None:
        self.cache = cache
        self.num_threads = num_threads  # CPU kernel threads of the attention calls (None: the pool's size)
        starts = [s.kv_len(a) for s, a in zip(seqs, starts)]
        ends = [s.kv_len(b) for s, b in zip(seqs, ends)]
        slots: list[int] = []
        for seq, a, b in zip(seqs, starts, ends):
            slots.extend(cache.slots(seq, a, b))
        q_lens = [b - a for a, b in zip(starts, ends)]
        self.decode = all(n == 1 for n in q_lens)
        self.q_lens = q_lens
        self.fresh = all(a == 0 for a in starts)  # no sequence has a cached prefix
        self.slot_mapping = torch.tensor(slots, dtype=torch.int64)
        width = max(len(s.table) for s in seqs)
        self.block_tables = torch.tensor([s.table + [0] * (width - len(s.table)) for s in seqs], dtype=torch.int32)
        self.context_lens = torch.tensor(list(ends), dtype=torch.int32)
        qsl = [0]
        for n in q_lens:
            qsl.append(qsl[-1] + n)
        self.query_start_loc = torch.tensor(qsl, dtype=torch.int32)
        self.positions = torch.cat([torch.arange(a, b) for a, b in zip(starts, ends)])
        self.last_rows = self.query_start_loc[1:] - 1

    def layer(self, i: int) -> "PagedLayer":
        return PagedLayer(self, i)


class PagedLayer(PagedAttention):
    def __init__(self, step: PagedStep, index: int) -> None:
        self.step, self.index = step, index

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
               slopes: torch.Tensor | None) -> torch.Tensor:
        """q (tokens, heads, head_dim), k/v (tokens, kv_heads, head_dim) of the new tokens:
        writes k/v to the cache, returns the attention output (tokens, heads, head_dim) in float32."""
        st = self.step
        kc, vc, ks, vs = st.cache.layer(self.index)
        kb = st.cache.k_bound[self.index]
        kernels.write_kv_cache(k, v, kc, vc, st.slot_mapping, ks, vs, num_threads=st.num_threads, k_bound=kb)
        if q.is_cuda and not st.decode and st.fresh:  # a fresh prompt: fused attention over its own tokens
            return kernels.causal_alibi_attention(q, k, v, st.q_lens, scale, slopes)
        if st.decode:
            return kernels.paged_attention_decode(q, kc, vc, st.block_tables, st.context_lens, scale, slopes, ks, vs,
                                                  num_threads=st.num_threads, k_bound=kb)
        return kernels.paged_attention_prefill(q, kc, vc, st.block_tables, st.context_lens, st.query_start_loc, scale,
                                               slopes, ks, vs, num_threads=st.num_threads, k_bound=kb)
