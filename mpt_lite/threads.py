"""Keeping torch's intra-op threads out of the way of mpt_lite's own kernel pool.

With quantized weights every heavy operation (matmuls, attention) runs in mpt_lite's thread pool;
what torch still does between kernels (layer norms, GELU, residual adds) is tiny, and torch's
OpenMP threads spinning against the pool on a busy machine made a 1024-element GELU take ~8 ms
instead of ~15 us (measured here on 2 loaded cores). So while a quantized model computes, torch
runs on one thread; the caller's setting is restored afterwards."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def limit_torch_threads(n: int | None) -> Iterator[None]:
    prev = torch.get_num_threads()
    if n is None or prev <= n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
