"""The default KV cache budget of a long-running server: room for `max_num_seqs` sequences at the
model's full context, but at most half the memory that is free now (RAM, or the GPU's memory),
and never less than one full-context sequence."""
from __future__ import annotations

import os
from typing import Any

import torch

from ..kernels import Q4_GROUP
from .block_manager import DEFAULT_BLOCK_SIZE
from .kv_cache import Q4_KV_DTYPE, PagedKVCache

FREE_MEMORY_SHARE = 0.5


KV_DTYPE_ENV = "MPT_LITE_KV_DTYPE"
KV_DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "int8": torch.int8,
                  "int4": Q4_KV_DTYPE}


def kv_dtype_of(model: Any) -> torch.dtype:
    """The KV dtype an Engine picks for the model when it is not given one: MPT_LITE_KV_DTYPE (float32,
    bfloat16, float16, int8 or int4: torch.quint4x2, the 4-bit cache, CPU only) when set, else the model's dtype where that is a float dtype, else float32
    (a 4-bit or 8-bit model computes in float32). At long contexts the cache's bytes decide decode speed:
    int8 KV decodes a synthetic 1.3B at 2048 tokens about 2x faster than float32 (docs/benchmarks.md)."""
    name = os.environ.get(KV_DTYPE_ENV, "")
    if name:
        if name not in KV_DTYPE_NAMES:
            raise ValueError(f"{KV_DTYPE_ENV}={name!r}: expected one of {', '.join(KV_DTYPE_NAMES)}")
        return KV_DTYPE_NAMES[name]
    return model.dtype if model.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32


def kv_bytes_per_token(model: Any, dtype: torch.dtype | None = None) -> int:
    cfg = model.config
    block = PagedKVCache.block_bytes(cfg.n_layers, cfg.kv_n_heads, cfg.head_dim, DEFAULT_BLOCK_SIZE,
                                     dtype or kv_dtype_of(model))
    return block // DEFAULT_BLOCK_SIZE


def kv_bytes_by_dtype(config: Any) -> dict[str, int]:
    """Bytes of K and V a token holds over every layer, per KV dtype name the model can use (int4: head_dim a
    multiple of 32); `mpt-lite info` prints them."""
    return {name: PagedKVCache.block_bytes(config.n_layers, config.kv_n_heads, config.head_dim, 1, dtype)
            for name, dtype in KV_DTYPE_NAMES.items() if name != "int4" or config.head_dim % Q4_GROUP == 0}


def free_memory_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory available to a new allocation on device now (None when it cannot be told)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_kv_bytes(model: Any, max_num_seqs: int, free_bytes: int | None = None) -> int:
    """The budget in bytes (free_bytes: the free memory to size by; measured when None)."""
    if not isinstance(max_num_seqs, int) or max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be a positive integer, got {max_num_seqs!r}")
    per_seq = kv_bytes_per_token(model) * model.config.max_seq_len
    want = per_seq * max_num_seqs
    if free_bytes is None:
        free_bytes = free_memory_bytes(getattr(model, "device", "cpu"))
    if free_bytes is not None:
        want = min(want, int(free_bytes * FREE_MEMORY_SHARE))
    return max(want, per_seq)
