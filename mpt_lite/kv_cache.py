"""Old import path: the paged KV cache now lives in mpt_lite.runtime (block_manager, kv_cache)."""
from __future__ import annotations

from .runtime.block_manager import DEFAULT_BLOCK_SIZE, BlockManager, CacheExhaustedError, SeqBlocks  # noqa: F401
from .runtime.kv_cache import PagedKVCache, PagedLayer, PagedStep  # noqa: F401
