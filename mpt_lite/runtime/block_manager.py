"""Block bookkeeping of the paged KV cache: a free list with reference counts, block tables per
sequence, and prefix sharing.

A block holds `block_size` consecutive tokens of one sequence for every layer. Full blocks are
keyed by a hash of their token ids chained with the previous block's key, so a later sequence
that starts with the same tokens reuses them: with ALiBi, keys carry no position, and a block's
K/V depend only on the tokens up to it, so the reuse is exact. A freed block keeps its contents
and key until it is handed out again, so a prefix survives between requests while memory allows.
Free blocks are handed out most recently freed first: a server running one request after another
keeps reusing the same few blocks, whose memory is already touched, instead of walking through
the whole budget page by page (its resident memory would climb to the budget)."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

DEFAULT_BLOCK_SIZE = 16


class CacheExhaustedError(ValueError):
    """The KV cache budget cannot hold what was asked of it."""


@dataclass
class SeqBlocks:
    """One sequence's share of the cache: its block table and how many tokens have K/V in it."""

    table: list[int] = field(default_factory=list)
    num_cached: int = 0  # tokens of the sequence whose K/V were computed (dropped ones included)
    hashed: int = 0  # leading full blocks registered for prefix sharing
    last_key: bytes = b""
    dropped: int = 0  # tokens dropped by context shifts (whole blocks after the kept ones)

    def kv_len(self, n_tokens: int) -> int:
        """Where token n_tokens of the sequence sits in its block table (dropped tokens left out)."""
        return n_tokens - self.dropped


class BlockManager:
    """Which blocks are free, which sequence holds which, and which full blocks hold which token
    prefix. Pure bookkeeping: no tensors (PagedKVCache adds them)."""

    def __init__(self, num_blocks: int, block_size: int = DEFAULT_BLOCK_SIZE, prefix_caching: bool = True) -> None:
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise CacheExhaustedError(f"the KV cache budget holds no block (num_blocks={num_blocks!r})")
        self.num_blocks, self.block_size, self.prefix_caching = num_blocks, block_size, prefix_caching
        self._ref = [0] * num_blocks
        # the end of the dict is taken first: block 0 first on a fresh pool, then the latest freed
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in reversed(range(num_blocks)))
        self._by_key: dict[bytes, int] = {}
        self._key_of: dict[int, tuple[bytes, tuple[int, ...]]] = {}

    # ---- block pool ----
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def _take(self) -> int:
        b, _ = self._free.popitem(last=True)
        old = self._key_of.pop(b, None)
        if old is not None and self._by_key.get(old[0]) == b:
            del self._by_key[old[0]]
        self._ref[b] = 1
        return b

    def _release_block(self, b: int, keep_longest: bool = False) -> None:
        """keep_longest: a keyed block goes to the far end of the free list (reused last), for
        blocks that still hold a prefix other requests may want while their owner runs on."""
        self._ref[b] -= 1
        if self._ref[b] == 0:
            self._free[b] = None
            if keep_longest and b in self._key_of:
                self._free.move_to_end(b, last=False)

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
        return self.blocks_for(seq.kv_len(n_tokens)) - len(seq.table) <= len(self._free)

    def grow(self, seq: SeqBlocks, n_tokens: int) -> None:
        """Gives `seq` blocks for its first n_tokens tokens (dropped ones excepted); CacheExhaustedError
        when the pool is short."""
        need = self.blocks_for(seq.kv_len(n_tokens)) - len(seq.table)
        if need > len(self._free):
            raise CacheExhaustedError(
                f"the KV cache is full: {n_tokens} tokens need {need} more blocks of {self.block_size} tokens, "
                f"{len(self._free)} of {self.num_blocks} are free; raise the budget (num_blocks / max_bytes) or "
                "run fewer sequences at once")
        for _ in range(need):
            seq.table.append(self._take())

    def release(self, seq: SeqBlocks) -> None:
        for b in seq.table:  # the tail is freed last, so it is reused first and a prefix survives longest
            self._release_block(b)
        seq.table, seq.num_cached, seq.hashed, seq.last_key, seq.dropped = [], 0, 0, b"", 0

    def truncate(self, seq: SeqBlocks, n_tokens: int) -> None:
        """Frees the blocks beyond those the first n_tokens tokens need (after speculative tokens
        were rejected). Those blocks were never keyed: commit keys only blocks below num_cached."""
        keep = self.blocks_for(seq.kv_len(n_tokens))
        for b in reversed(seq.table[keep:]):
            self._release_block(b)
        del seq.table[keep:]

    def droppable_blocks(self, seq: SeqBlocks, n_keep: int) -> int:
        """How many whole blocks a context shift may drop: the full blocks between the ones that
        hold the first n_keep tokens (whole blocks: n_keep rounds up) and the block being written."""
        return max(0, seq.kv_len(seq.num_cached) // self.block_size - self.blocks_for(n_keep))

    def shift(self, seq: SeqBlocks, n_keep: int, n_blocks: int) -> None:
        """Context shift: drops n_blocks whole blocks after those holding the first n_keep tokens.
        The kept K/V stay where they are; the dropped blocks return to the pool (a block another
        sequence shares stays with it, untouched). The sequence stops keying its blocks for prefix
        sharing: what it computes from now on depends on a context no prefix describes."""
        if not 0 < n_blocks <= self.droppable_blocks(seq, n_keep):
            raise ValueError(f"cannot drop {n_blocks} blocks: {self.droppable_blocks(seq, n_keep)} are droppable")
        kb = self.blocks_for(n_keep)
        for b in seq.table[kb:kb + n_blocks]:  # a dropped prefix block is not the next one rewritten
            self._release_block(b, keep_longest=True)
        del seq.table[kb:kb + n_blocks]
        seq.dropped += n_blocks * self.block_size

    def commit(self, seq: SeqBlocks, tokens: Sequence[int], num_cached: int) -> None:
        """Records that the first num_cached tokens have K/V in the cache; keys the full blocks."""
        seq.num_cached = num_cached
        if not self.prefix_caching or seq.dropped:
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
        """Cache slots of the sequence's tokens [start, end) (positions in the block table)."""
        bs, table = self.block_size, seq.table
        return [table[p // bs] * bs + p % bs for p in range(start, end)]
