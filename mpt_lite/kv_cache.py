"""The paged KV cache: a pool of fixed-size blocks per layer for K and V, block tables per
sequence, a free list with reference counts, and prefix sharing.

A block holds `block_size` consecutive tokens of one sequence for every layer. Full blocks are
keyed by a hash of their token ids chained with the previous block's key, so a later sequence
that starts with the same tokens reuses them: with ALiBi, keys carry no position, and a block's
K/V depend only on the tokens up to it, so the reuse is exact. A freed block keeps its contents
and key until it is handed out again (least recently freed first), so a prefix survives between
requests while memory allows."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import torch

from . import ops

DEFAULT_BLOCK_SIZE = 16


class CacheExhaustedError(ValueError):
    """The KV cache budget cannot hold what was asked of it."""


@dataclass
class SeqBlocks:
    """One sequence's share of the cache: its block table and how many tokens have K/V in it."""

    table: list[int] = field(default_factory=list)
    num_cached: int = 0  # tokens whose K/V are in the cache
    hashed: int = 0  # leading full blocks registered for prefix sharing
    last_key: bytes = b""


class PagedKVCache:
    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, *, block_size: int = DEFAULT_BLOCK_SIZE,
                 num_blocks: int | None = None, max_bytes: int | None = None,
                 dtype: torch.dtype = torch.float32, prefix_caching: bool = True,
                 device: torch.device | str = "cpu") -> None:
        if dtype not in ops.KV_CACHE_DTYPES:
            raise TypeError(f"KV cache dtype must be one of {', '.join(map(str, ops.KV_CACHE_DTYPES))}, got {dtype}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        self.n_layers, self.kv_heads, self.head_dim = n_layers, kv_heads, head_dim
        self.block_size, self.dtype, self.prefix_caching = block_size, dtype, prefix_caching
        self.bytes_per_block = self.block_bytes(n_layers, kv_heads, head_dim, block_size, dtype)
        if (num_blocks is None) == (max_bytes is None):
            raise ValueError("give the KV cache budget as exactly one of num_blocks and max_bytes")
        if max_bytes is not None:
            num_blocks = int(max_bytes) // self.bytes_per_block
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise CacheExhaustedError(
                f"the KV cache budget holds no block (one block of {block_size} tokens needs "
                f"{self.bytes_per_block} bytes over {n_layers} layers)")
        self.num_blocks = num_blocks
        shape = (num_blocks, block_size, kv_heads, head_dim)
        self.device = torch.device(device)
        # torch.empty: pages are committed by the OS only when written, so a large budget is cheap
        # (on a GPU the whole budget is allocated at once).
        self.k = [torch.empty(shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        if dtype == torch.int8:
            self.k_scale = [torch.empty(shape[:3], device=self.device) for _ in range(n_layers)]
            self.v_scale = [torch.empty(shape[:3], device=self.device) for _ in range(n_layers)]
        else:
            self.k_scale = self.v_scale = [None] * n_layers
        self._ref = [0] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._by_key: dict[bytes, int] = {}
        self._key_of: dict[int, tuple[bytes, tuple[int, ...]]] = {}

    @staticmethod
    def block_bytes(n_layers: int, kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype) -> int:
        per_token = kv_heads * (head_dim * torch.empty((), dtype=dtype).element_size() + (4 if dtype == torch.int8 else 0))
        return 2 * n_layers * block_size * per_token

    # ---- block pool ----
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def _take(self) -> int:
        b, _ = self._free.popitem(last=False)
        old = self._key_of.pop(b, None)
        if old is not None and self._by_key.get(old[0]) == b:
            del self._by_key[old[0]]
        self._ref[b] = 1
        return b

    def _release_block(self, b: int) -> None:
        self._ref[b] -= 1
        if self._ref[b] == 0:
            self._free[b] = None

    # ---- sequences ----
    def _key(self, prev: bytes, tokens: Sequence[int]) -> bytes:
        h = hashlib.blake2b(prev, digest_size=16)
        h.update(b"".join(int(t).to_bytes(4, "little", signed=True) for t in tokens))
        return h.digest()

    def match_prefix(self, tokens: Sequence[int]) -> SeqBlocks:
        """Blocks for a new sequence, starting with the cached full blocks of its longest known
        prefix. At least the last token is left to compute: its logits are needed."""
        seq = SeqBlocks()
        if not self.prefix_caching:
            return seq
        bs = self.block_size
        for i in range((len(tokens) - 1) // bs):
            chunk = tuple(int(t) for t in tokens[i * bs:(i + 1) * bs])
            key = self._key(seq.last_key, chunk)
            b = self._by_key.get(key)
            if b is None or self._key_of[b][1] != chunk:
                break
            if self._ref[b] == 0:
                del self._free[b]
            self._ref[b] += 1
            seq.table.append(b)
            seq.last_key, seq.hashed = key, i + 1
        seq.num_cached = len(seq.table) * bs
        return seq

    def can_grow(self, seq: SeqBlocks, n_tokens: int) -> bool:
        return self.blocks_for(n_tokens) - len(seq.table) <= len(self._free)

    def grow(self, seq: SeqBlocks, n_tokens: int) -> None:
        """Gives `seq` blocks for n_tokens tokens in all; CacheExhaustedError when the pool is short."""
        need = self.blocks_for(n_tokens) - len(seq.table)
        if need > len(self._free):
            raise CacheExhaustedError(
                f"the KV cache is full: {n_tokens} tokens need {need} more blocks of {self.block_size} tokens, "
                f"{len(self._free)} of {self.num_blocks} are free; raise the budget (num_blocks / max_bytes) or "
                "run fewer sequences at once")
        for _ in range(need):
            seq.table.append(self._take())

    def release(self, seq: SeqBlocks) -> None:
        for b in reversed(seq.table):  # the tail is freed first, so it is reused first
            self._release_block(b)
        seq.table, seq.num_cached, seq.hashed, seq.last_key = [], 0, 0, b""

    def commit(self, seq: SeqBlocks, tokens: Sequence[int], num_cached: int) -> None:
        """Records that the first num_cached tokens have K/V in the cache; keys the full blocks."""
        seq.num_cached = num_cached
        if not self.prefix_caching:
            return
        bs = self.block_size
        while (seq.hashed + 1) * bs <= num_cached:
            i = seq.hashed
            chunk = tuple(int(t) for t in tokens[i * bs:(i + 1) * bs])
            key = self._key(seq.last_key, chunk)
            b = seq.table[i]
            if key not in self._by_key:
                self._by_key[key] = b
                self._key_of[b] = (key, chunk)
            seq.last_key, seq.hashed = key, i + 1

    def slots(self, seq: SeqBlocks, start: int, end: int) -> list[int]:
        bs, table = self.block_size, seq.table
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    def layer(self, i: int) -> tuple:
        return self.k[i], self.v[i], self.k_scale[i], self.v_scale[i]


class PagedStep:
    """What one forward pass over the paged cache needs: for each scheduled sequence, its new
    tokens' slots, its block table and context length. Layers call `attend` through `layer(i)`."""

    def __init__(self, cache: PagedKVCache, seqs: Sequence[SeqBlocks], starts: Sequence[int],
                 ends: Sequence[int]) -> None:
        self.cache = cache
        slots: list[int] = []
        for seq, a, b in zip(seqs, starts, ends):
            slots.extend(cache.slots(seq, a, b))
        q_lens = [b - a for a, b in zip(starts, ends)]
        self.decode = all(n == 1 for n in q_lens)
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


class PagedLayer:
    def __init__(self, step: PagedStep, index: int) -> None:
        self.step, self.index = step, index

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
               slopes: torch.Tensor | None) -> torch.Tensor:
        """q (tokens, heads, head_dim), k/v (tokens, kv_heads, head_dim) of the new tokens:
        writes k/v to the cache, returns the attention output (tokens, heads, head_dim) in float32."""
        st = self.step
        kc, vc, ks, vs = st.cache.layer(self.index)
        ops.write_kv_cache(k, v, kc, vc, st.slot_mapping, ks, vs)
        if st.decode:
            return ops.paged_attention_decode(q, kc, vc, st.block_tables, st.context_lens, scale, slopes, ks, vs)
        return ops.paged_attention_prefill(q, kc, vc, st.block_tables, st.context_lens, st.query_start_loc, scale,
                                           slopes, ks, vs)
