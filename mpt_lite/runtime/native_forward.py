"""forward() of a quantized MptForCausalLM on the CPU as one native call: the engine's plan
(kernels.DecodePlan, native_step.py) run over the new tokens, instead of the per-op path's ~12
Python-level calls and fresh tensors a layer.

Taken only where it returns what the per-op path returns, to float32 summation-order rounding:
input_ids without padding (no attention_mask, or one of all ones), output_hidden_states off, an int
logits_to_keep, eval mode (no dropout), a past_key_values (if any) of the model's shape, and a model the
native step computes (native_step.unsupported_reason) whose Linears and embedding are all quantized (the
plan's float32 matmul is a plain loop; float models keep torch's GEMM). The quantized matmuls carry no
autograd graph, so neither path's logits require grad, with or without torch.no_grad().
MPT_LITE_NATIVE_STEP=0 turns it off with the engine's native step. Everything else runs the per-op
path, which stays the reference.

The cache a call returns is new, as the per-op path's is (a caller may branch several continuations
from one prefix): its keys and values are views, in transformers' layout, of a paged cache the call
wrote (with room to grow), of which they show the first `length` tokens. A call whose past is the
latest cache returned from such a storage appends there, in slots no earlier view shows, and reuses its
plan: a transformers-style decode loop neither copies its past nor rebuilds the plan each token. Any
other past (a branch from an earlier cache, tuples, the per-op path's cache, a full storage) is copied
into a new one, as the per-op path copies it by torch.cat. The checks that the model runs natively
are made when a storage is created, as an Engine makes them once."""
from __future__ import annotations

import threading
import weakref
from typing import Any

import torch

from .. import kernels
from ..model.cache import MptCache
from ..model.inputs import check_input_ids
from ..quant.layers import QuantWeight
from .block_manager import DEFAULT_BLOCK_SIZE
from .native_step import block_linears, build_plan, env_allows_native, unsupported_reason


class _CallCache:
    """Float32 paged K/V (with key bounds) for `batch` sequences, each sequence's `blocks` blocks back to
    back. shared: one layer's tensors handed to every layer, for a call that returns no cache (the plan
    runs layer after layer, so a layer's keys are needed only while it attends): the memory of one
    layer, not n_layers'. Otherwise a storage that returned caches view; `claimed` tokens of each
    sequence are shown by the latest of them."""

    device = torch.device("cpu")

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, batch: int, blocks: int, shared: bool) -> None:
        shape, _ = kernels.cache_shapes(batch * blocks, DEFAULT_BLOCK_SIZE, kv_heads, head_dim, torch.float32)
        self.batch, self.capacity = batch, blocks * DEFAULT_BLOCK_SIZE
        n = 1 if shared else n_layers
        self.k = [torch.empty(shape) for _ in range(n)]
        self.v = [torch.empty(shape) for _ in range(n)]
        self.k_bound = [torch.empty(shape[:3]) for _ in range(n)]
        if shared:
            self.k, self.v, self.k_bound = self.k * n_layers, self.v * n_layers, self.k_bound * n_layers
        self.claimed = 0
        self.plan: kernels.DecodePlan | None = None
        self.model: Any = None  # weakref to the model the plan computes
        self._lock = threading.Lock()

    def forget_plan(self, _model: Any = None) -> None:
        """Drops the plan (and the weights it holds) once its model is gone; a cache may outlive it."""
        self.plan = None

    def claim(self, length: int, total: int) -> bool:
        """Takes slots length .. total - 1 of every sequence when the latest cache shows `length` tokens
        and they fit (False: the caller copies instead)."""
        with self._lock:
            if self.claimed != length or total > self.capacity:
                return False
            self.claimed = total
            return True

    def layer(self, i: int) -> tuple:
        return self.k[i], self.v[i], None, None

    def _seq_major(self, t: torch.Tensor) -> torch.Tensor:  # (batch, capacity, kv_heads[, head_dim])
        return t.view(self.batch, self.capacity, *t.shape[2:])

    def slots(self, start: int, end: int) -> torch.Tensor:
        """The slots of tokens start .. end - 1 of every sequence, sequence after sequence."""
        seq = torch.arange(self.batch, dtype=torch.int64).view(-1, 1)
        return (seq * self.capacity + torch.arange(start, end).view(1, -1)).reshape(-1)

    def fill(self, past: MptCache) -> None:
        """The past's keys and values in the first past-length slots of each sequence, written as the plan
        writes its own (write_kv_cache: with their key bounds)."""
        slots = self.slots(0, past.get_seq_length())
        for i, (k, v) in enumerate(past):  # (batch, kv_heads, tokens, head_dim) -> (batch * tokens, kv_heads, head_dim)
            rows = [t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3]) for t in (k, v)]
            kernels.write_kv_cache(*rows, self.k[i], self.v[i], slots, k_bound=self.k_bound[i])

    def legacy(self, tokens: int) -> MptCache:
        """The first `tokens` of each sequence as (batch, kv_heads, tokens, head_dim) views per layer."""
        cache = MptCache([(self._seq_major(k)[:, :tokens].transpose(1, 2),
                           self._seq_major(v)[:, :tokens].transpose(1, 2)) for k, v in zip(self.k, self.v)])
        cache.storage = self
        return cache


def _storage_to_extend(model: Any, past: Any, batch: int) -> _CallCache | None:
    """The storage of `past` when it is the latest cache a storage of this model returned."""
    st = getattr(past, "storage", None)
    if (isinstance(st, _CallCache) and st.model is not None and st.model() is model and st.batch == batch
            and st.claimed == past.get_seq_length()):
        return st
    return None


# Room a returned cache's storage keeps for the tokens of later calls (at most up to max_seq_len).
def _capacity(total: int, max_seq_len: int) -> int:
    return max(total, min(max_seq_len, total + max(256, total // 4)))


def _all_quantized(model: Any) -> bool:
    t = model.transformer
    mats = [t.wte] + ([] if model.lm_head is None else [model.lm_head])
    mats += [m for b in t.blocks for _, _, m in block_linears(b)]
    return all(isinstance(m, QuantWeight) for m in mats)


def _past_fits(model: Any, past: MptCache, batch: int) -> bool:
    """Whether the past is a cache of this model's shape for this batch (anything else: the per-op path,
    which raises what is wrong with it)."""
    cfg = model.config
    if len(past) != cfg.n_layers:
        return False
    want = (batch, cfg.kv_n_heads, past.get_seq_length(), cfg.head_dim)
    return all(isinstance(t, torch.Tensor) and tuple(t.shape) == want and t.device.type == "cpu"
               and t.is_floating_point() for layer in past for t in layer)


def applies(model: Any, input_ids: Any, attention_mask: Any, inputs_embeds: Any, past_key_values: Any,
            use_cache: bool, output_hidden_states: bool, logits_to_keep: Any) -> bool:
    """Whether forward() with these arguments runs natively (see the module's docstring). Arguments are
    not validated here: whatever is wrong with them, the per-op path raises it."""
    if (inputs_embeds is not None or output_hidden_states
            or not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long
            or input_ids.numel() == 0 or input_ids.device.type != "cpu"
            or not isinstance(logits_to_keep, int) or isinstance(logits_to_keep, bool) or logits_to_keep < 0
            or not env_allows_native()):
        return False
    batch, tokens = input_ids.shape
    extends = False
    if past_key_values is not None:
        try:
            past = MptCache.coerce(past_key_values)
        except (TypeError, ValueError):
            return False
        extends = _storage_to_extend(model, past, batch) is not None
        if not extends and not _past_fits(model, past, batch):
            return False
        tokens += past.get_seq_length()
    if tokens > model.config.max_seq_len or model.training:
        return False
    if attention_mask is not None and not (isinstance(attention_mask, torch.Tensor)
                                           and tuple(attention_mask.shape) == (batch, tokens)
                                           and bool((attention_mask != 0).all())):
        return False
    return extends or (_all_quantized(model) and unsupported_reason(model, _CallCache) is None)


def forward(model: Any, input_ids: torch.Tensor, past_key_values: Any, use_cache: bool,
            logits_to_keep: int) -> tuple[torch.Tensor, MptCache | None]:
    """forward()'s logits (batch, kept positions, vocab) for input_ids (batch, new tokens) after
    past_key_values, and the cache the per-op path would return (None without use_cache or a past)."""
    cfg = model.config
    check_input_ids(input_ids, cfg.vocab_size)
    past = MptCache.coerce(past_key_values)
    n_past = past.get_seq_length() if past is not None else 0
    returns_cache = use_cache or past is not None
    batch, new = input_ids.shape
    total = n_past + new
    cache = _storage_to_extend(model, past, batch)
    if cache is None or not cache.claim(n_past, total):
        size = _capacity(total, cfg.max_seq_len) if returns_cache else total
        blocks = -(-size // DEFAULT_BLOCK_SIZE)
        cache = _CallCache(cfg.n_layers, cfg.kv_n_heads, cfg.head_dim, batch, blocks, shared=not returns_cache)
        if n_past:
            cache.fill(past)
        cache.claimed = total
        cache.plan, cache.model = build_plan(model, cache), weakref.ref(model, cache.forget_plan)
    blocks = cache.capacity // DEFAULT_BLOCK_SIZE
    seq = torch.arange(batch, dtype=torch.int64).view(-1, 1)
    slots = cache.slots(n_past, total)
    tables = (seq * blocks + torch.arange(blocks).view(1, -1)).to(torch.int32)
    lens = torch.full((batch,), total, dtype=torch.int32)
    starts = (torch.arange(batch + 1) * new).to(torch.int32)
    keep = new if logits_to_keep == 0 else min(logits_to_keep, new)
    rows = (seq * new + torch.arange(new - keep, new).view(1, -1)).reshape(-1)
    out = cache.plan.step(input_ids.reshape(-1), slots, tables, lens, starts, new == 1, rows, model.num_threads)
    return out.view(batch, keep, -1), cache.legacy(total) if returns_cache else None
