"""Running requests: the block manager (bookkeeping), the paged KV tensors, requests, the
scheduler, the batched sampler, the engine loop, and generate()/chat() on top of it."""
from __future__ import annotations

from .block_manager import DEFAULT_BLOCK_SIZE, BlockManager, CacheExhaustedError, SeqBlocks
from .chat_session import ChatSession
from .engine import Engine
from .kv_cache import PagedKVCache, PagedLayer, PagedStep
from .request import Request
from .sampler import SamplingParams, sample_batch
from .scheduler import Scheduler

__all__ = ["DEFAULT_BLOCK_SIZE", "BlockManager", "CacheExhaustedError", "SeqBlocks", "ChatSession", "Engine", "PagedKVCache",
           "PagedLayer", "PagedStep", "Request", "SamplingParams", "sample_batch", "Scheduler"]
