"""Decode steps on a CUDA device as replayed CUDA graphs, as vLLM runs them: for each batch bucket
(1, 2, 4, 8, 16, 32 sequences) the model's forward over one new token per sequence is captured
once over static device buffers (token ids, positions, slot mapping, block tables, context
lengths) and replayed every step after copying the step's index arrays into those buffers: no
Python per layer, no kernel launch from the host, no allocation inside the step. Prefill, mixed
and drafted steps, and batches over the largest bucket run the eager forward.

The kernels' host-side work (argument checks, the attention's launch geometry and workspace) runs
once, at capture, on host arrays describing the worst case the buffers can hold: every block table
full, so every context length up to the model's max_seq_len fits the captured grid (the kernels
read the true lengths from the device buffers; partitions past a sequence's end add nothing).
What goes into the buffers at replay comes from the engine's own bookkeeping (block manager,
scheduler) and token ids it checked on entry. Padding rows of a bucket write no K/V (slot -1)
and attend over one key of block 0; their logits are dropped.

MPT_LITE_CUDA_GRAPHS=0 turns graphs off (every step eager)."""
from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from .. import kernels
from ..model.attention_backend import PagedBatch
from .kv_cache import PagedKVCache, PagedLayer, PagedStep

BUCKETS = (1, 2, 4, 8, 16, 32)


def bucket_for(n: int) -> int | None:
    """The smallest captured batch size that holds n sequences (None: larger than every bucket)."""
    return next((b for b in BUCKETS if b >= n), None)


def graphs_unsupported_reason(model: Any, cache: PagedKVCache) -> str | None:
    """Why decode steps cannot run as CUDA graphs for this model and cache (None: they can)."""
    if cache.device.type != "cuda":
        return f"the KV cache is on {cache.device}"
    if os.environ.get("MPT_LITE_CUDA_GRAPHS", "1") == "0":
        return "MPT_LITE_CUDA_GRAPHS=0"
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return "forward hooks are registered on the model (a replayed graph runs no Python)"
    return None


class StaticDecodeBatch(PagedBatch):
    """A PagedBatch of n one-token sequences over fixed device buffers, with worst-case host copies
    of the index arrays for the kernels' checks and launch geometry (see the module's docstring)."""

    decode = True
    num_threads = None
    query_start_loc = None

    def __init__(self, cache: PagedKVCache, n: int, max_blocks: int) -> None:
        dev = cache.device
        self.cache, self.n, self.max_blocks = cache, n, max_blocks
        self.ids = torch.zeros(n, dtype=torch.long, device=dev)
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64)
        self.block_tables = torch.zeros(n, max_blocks, dtype=torch.int32)
        self.context_lens = torch.full((n,), max_blocks * cache.block_size, dtype=torch.int32)
        self.dev_slots = self.slot_mapping.to(dev)
        self.dev_tables = self.block_tables.to(dev)
        self.dev_lens = torch.ones(n, dtype=torch.int32, device=dev)
        for host, device_copy in ((self.slot_mapping, self.dev_slots), (self.block_tables, self.dev_tables),
                                  (self.context_lens, self.dev_lens)):
            kernels.attach_device_copy(host, device_copy)

    def layer(self, i: int) -> PagedLayer:
        return PagedLayer(self, i)

    def load(self, ids: torch.Tensor, step: PagedStep) -> None:
        """Copies one step's inputs into the buffers (rows past the step's sequences: padding)."""
        b, w = len(ids), step.block_tables.shape[1]
        tables = torch.zeros(self.n, self.max_blocks, dtype=torch.int32)
        tables[:b, :w] = step.block_tables
        lens = torch.ones(self.n, dtype=torch.int32)
        lens[:b] = step.context_lens
        slots = torch.full((self.n,), -1, dtype=torch.int64)
        slots[:b] = step.slot_mapping
        tok = torch.zeros(self.n, dtype=torch.long)
        tok[:b] = ids
        pos = torch.zeros(self.n, dtype=torch.long)
        pos[:b] = step.positions
        for dst, src in ((self.dev_tables, tables), (self.dev_lens, lens), (self.dev_slots, slots),
                         (self.ids, tok), (self.positions, pos)):
            dst.copy_(src)


class CudaGraphDecoder:
    """Captures (lazily, per bucket) and replays the decode forward of one model over one cache."""

    def __init__(self, model: Any, cache: PagedKVCache) -> None:
        self.model, self.cache = model, cache
        self.max_blocks = -(-model.config.max_seq_len // cache.block_size)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, StaticDecodeBatch, torch.Tensor]] = {}
        self.capture_error: str | None = None  # set when a capture failed: every step runs eagerly after

    def logits(self, ids: torch.Tensor, step: PagedStep) -> torch.Tensor | None:
        """Logits (len(ids), vocab) of a decode step by graph replay; None when this step must run
        eagerly (not pure decode, too many sequences, a block table wider than the buffers)."""
        bucket = bucket_for(len(ids))
        if bucket is None or not step.decode or step.block_tables.shape[1] > self.max_blocks \
                or self.capture_error is not None:
            return None
        if bucket not in self.graphs:
            try:
                self.graphs[bucket] = self._capture(bucket)
            except RuntimeError as e:  # an op that cannot be captured: keep serving, eagerly
                self.capture_error = f"{type(e).__name__}: {e}"
                warnings.warn(f"CUDA graph capture failed, decode steps run eagerly: {self.capture_error}",
                              RuntimeWarning, stacklevel=2)
                return None
        graph, batch, out = self.graphs[bucket]
        batch.load(ids, step)
        graph.replay()
        return out[:len(ids)].clone()

    def _capture(self, n: int) -> tuple[torch.cuda.CUDAGraph, StaticDecodeBatch, torch.Tensor]:
        dev = self.cache.device
        batch = StaticDecodeBatch(self.cache, n, self.max_blocks)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side), torch.inference_mode():  # warm-up: lazy state made outside the capture
            self.model.forward_paged(batch.ids, batch)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            out = self.model.forward_paged(batch.ids, batch)
        return graph, batch, out
