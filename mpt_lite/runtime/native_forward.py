"""forward() of a quantized MptForCausalLM on the CPU as one native call: the engine's plan
(kernels.DecodePlan, native_step.py) run over the prompt, instead of the per-op path's ~12
Python-level calls and fresh tensors a layer.

Taken only where it returns what the per-op path returns, to float32 summation-order rounding:
input_ids without padding (no attention_mask, or one of all ones), no past_key_values, use_cache
and output_hidden_states off, an int logits_to_keep, eval mode (no dropout), and a model the native step computes
(native_step.unsupported_reason) whose Linears and embedding are all quantized (the plan's float32
matmul is a plain loop; float models keep torch's GEMM). The quantized matmuls carry no autograd
graph, so neither path's logits require grad, with or without torch.no_grad(). MPT_LITE_NATIVE_STEP=0 turns it off with
the engine's native step. Everything else runs the per-op path, which stays the reference."""
from __future__ import annotations

from typing import Any

import torch

from .. import kernels
from ..model.inputs import check_input_ids
from ..quant.layers import QuantWeight
from .block_manager import DEFAULT_BLOCK_SIZE
from .native_step import build_plan, env_allows_native, unsupported_reason


class _SharedLayerCache:
    """One layer's float32 K/V for every sequence of the call, handed to every layer of the plan: the
    plan runs layer after layer, and without a cache to return a layer's keys are needed only while
    that layer attends. So the memory is one layer's, not n_layers'."""

    device = torch.device("cpu")

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, num_blocks: int) -> None:
        shape, _ = kernels.cache_shapes(num_blocks, DEFAULT_BLOCK_SIZE, kv_heads, head_dim, torch.float32)
        self.k, self.v = torch.empty(shape), torch.empty(shape)
        self.k_bound = [torch.empty(shape[:3])] * n_layers

    def layer(self, i: int) -> tuple:
        return self.k, self.v, None, None


def _all_quantized(model: Any) -> bool:
    t = model.transformer
    mats = [t.wte] + ([] if model.lm_head is None else [model.lm_head])
    mats += [m for b in t.blocks for m in (b.attn.Wqkv, b.attn.out_proj, b.ffn.up_proj, b.ffn.down_proj)]
    return all(isinstance(m, QuantWeight) for m in mats)


def applies(model: Any, input_ids: Any, attention_mask: Any, inputs_embeds: Any, past_key_values: Any,
            use_cache: bool, output_hidden_states: bool, logits_to_keep: Any) -> bool:
    """Whether forward() with these arguments runs natively (see the module's docstring). Arguments are
    not validated here: whatever is wrong with them, the per-op path raises it."""
    if (inputs_embeds is not None or past_key_values is not None or use_cache or output_hidden_states
            or not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long
            or input_ids.numel() == 0 or input_ids.device.type != "cpu"
            or not isinstance(logits_to_keep, int) or isinstance(logits_to_keep, bool) or logits_to_keep < 0):
        return False
    if input_ids.shape[1] > model.config.max_seq_len or not env_allows_native():
        return False
    if attention_mask is not None and not (isinstance(attention_mask, torch.Tensor)
                                           and attention_mask.shape == input_ids.shape
                                           and bool((attention_mask != 0).all())):
        return False
    if model.training or not _all_quantized(model):
        return False
    return unsupported_reason(model, _SharedLayerCache) is None


def logits(model: Any, input_ids: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
    """forward()'s logits (batch, kept positions, vocab) for input_ids (batch, tokens), computed by a plan
    built for this call (its scratch and the shared K/V are freed with it)."""
    cfg = model.config
    check_input_ids(input_ids, cfg.vocab_size)
    batch, tokens = input_ids.shape
    blocks = -(-tokens // DEFAULT_BLOCK_SIZE)
    cache = _SharedLayerCache(cfg.n_layers, cfg.kv_n_heads, cfg.head_dim, batch * blocks)
    plan = build_plan(model, cache)
    seq = torch.arange(batch, dtype=torch.int64).view(-1, 1)
    pos = torch.arange(tokens, dtype=torch.int64).view(1, -1)
    slots = (seq * (blocks * DEFAULT_BLOCK_SIZE) + pos).reshape(-1)
    tables = (seq * blocks + torch.arange(blocks).view(1, -1)).to(torch.int32)
    lens = torch.full((batch,), tokens, dtype=torch.int32)
    starts = (torch.arange(batch + 1) * tokens).to(torch.int32)
    keep = tokens if logits_to_keep == 0 else min(logits_to_keep, tokens)
    rows = (seq * tokens + torch.arange(tokens - keep, tokens).view(1, -1)).reshape(-1)
    out = plan.step(input_ids.reshape(-1), slots, tables, lens, starts, False, rows, model.num_threads)
    return out.view(batch, keep, -1)
