"""The engine's step as one native call on the CPU (kernels.DecodePlan), built from the model's
modules and the engine's paged KV cache on first use.

Only what the native step computes exactly is sent there: a float32 MptForCausalLM on the CPU with
LayerNorm, no qk_ln, no learned position embedding, and float32 or quantized (int8 / nf4 / int4,
each weight its own format) Linears and embedding. Anything else (bfloat16 / float16 models, CUDA,
rmsnorm, qk_ln, wpe, a model with forward hooks) runs the torch path, model.forward_paged. MPT_LITE_NATIVE_STEP=0 forces the
torch path everywhere."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .. import kernels
from ..model.base import MptModel, TiedEmbedding
from ..quant.layers import QuantEmbedding, QuantWeight
from .kv_cache import PagedKVCache, PagedStep

ENV_SWITCH = "MPT_LITE_NATIVE_STEP"

_SCALE_NAMES = {"int8": "SCB", "nf4": "weight_absmax", "int4": "weight_scales", "int6": "weight_scales"}


def env_allows_native() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def block_linears(block: Any) -> tuple:
    """A block's Linears as (the plan's name, the module's path in the block, the module)."""
    return (("wqkv", "attn.Wqkv", block.attn.Wqkv), ("out_proj", "attn.out_proj", block.attn.out_proj),
            ("up_proj", "ffn.up_proj", block.ffn.up_proj), ("down_proj", "ffn.down_proj", block.ffn.down_proj))


def _weight_problem(name: str, m: Any, embedding: bool = False) -> str | None:
    if isinstance(m, QuantWeight):
        if m.quant_type not in _SCALE_NAMES:
            return f"{name} has quant_type {m.quant_type!r}"
        return None
    kinds = (TiedEmbedding,) if embedding else (nn.Linear,)
    if type(m) not in kinds:
        return f"{name} is a {type(m).__name__}"
    if m.weight.dtype != torch.float32:
        return f"{name} is {m.weight.dtype}"
    return None


def unsupported_reason(model: Any, cache: PagedKVCache) -> str | None:
    """Why the native step cannot run this model and cache (None: it can)."""
    # (duck-typed: model.heads imports the runtime for generate, so the runtime does not import it)
    if not isinstance(getattr(model, "transformer", None), MptModel) or not hasattr(model, "lm_head") \
            or type(model).__name__ != "MptForCausalLM":
        return f"the model is a {type(model).__name__}, not an MptForCausalLM"
    cfg = model.config
    if model.device.type != "cpu" or cache.device.type != "cpu":
        return f"the model is on {model.device} (the native step is the CPU's)"
    if model.dtype != torch.float32:
        return f"the model's dtype is {model.dtype} (the native step computes in float32)"
    if "rmsnorm" in cfg.norm_type:
        return f"norm_type {cfg.norm_type!r}"
    if cfg.attn_config["qk_ln"]:
        return "qk_ln"
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return "forward hooks are registered on the model (the native step runs no module)"
    t = model.transformer
    if t.wpe is not None:
        return "a learned position embedding (wpe)"
    problems = [_weight_problem("transformer.wte", t.wte, embedding=True)]
    if model.lm_head is not None:
        problems.append(_weight_problem("lm_head", model.lm_head))
    for i, block in enumerate(t.blocks):
        for _, path, m in block_linears(block):
            problems.append(_weight_problem(f"blocks.{i}.{path}", m))
    norms = [t.norm_f] + [n for b in t.blocks for n in (b.norm_1, b.norm_2)]
    if any(n.weight.dtype != torch.float32 or (n.bias is not None and n.bias.dtype != torch.float32) for n in norms):
        problems.append("a norm is not float32")
    return next((p for p in problems if p), None)


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().float().contiguous()


def _set_weight(plan: kernels.DecodePlan, layer: int, name: str, m: Any) -> None:
    bias = getattr(m, "bias", None) if not isinstance(m, (TiedEmbedding, QuantEmbedding)) else None
    if isinstance(m, QuantWeight):
        codes = m.kernel_codes()
        plan.set_quant_weight(layer, name, m.quant_type, codes["weight"].contiguous(),
                              codes[_SCALE_NAMES[m.quant_type]].contiguous(), m.rows, m.cols, m.blocksize, _f32(bias),
                              rows8=m.rows8)
    else:
        plan.set_float_weight(layer, name, m.weight.detach().contiguous(), _f32(bias))


def build_plan(model: Any, cache: PagedKVCache) -> kernels.DecodePlan:
    cfg, t = model.config, model.transformer
    slopes = t.alibi_slopes(torch.device("cpu"))
    plan = kernels.DecodePlan(
        d_model=cfg.d_model, n_heads=cfg.n_heads, kv_heads=cfg.kv_n_heads, head_dim=cfg.head_dim,
        ffn=t.blocks[0].ffn.up_proj.out_features if len(t.blocks) else cfg.ffn_hidden_size,
        vocab=cfg.vocab_size, n_layers=cfg.n_layers, eps=cfg.layer_norm_epsilon,
        clip_qkv=cfg.attn_config["clip_qkv"], softmax_scale=cfg.softmax_scale,
        logit_scale=cfg.logit_scale_value, slopes=None if slopes is None else slopes.contiguous())
    _set_weight(plan, -1, "embedding", t.wte)
    _set_weight(plan, -1, "lm_head", t.wte if model.lm_head is None else model.lm_head)
    plan.set_norm(-1, "norm_f", _f32(t.norm_f.weight), _f32(t.norm_f.bias))
    for i, b in enumerate(t.blocks):
        plan.set_norm(i, "norm_1", _f32(b.norm_1.weight), _f32(b.norm_1.bias))
        plan.set_norm(i, "norm_2", _f32(b.norm_2.weight), _f32(b.norm_2.bias))
        for name, _, m in block_linears(b):
            _set_weight(plan, i, name, m)
        plan.set_cache(i, *cache.layer(i), k_bound=cache.k_bound[i])
    plan.validate()
    return plan


def native_logits(plan: kernels.DecodePlan, ids: torch.Tensor, step: PagedStep, rows: torch.Tensor,
                  num_threads: int | None = None) -> torch.Tensor:
    """What model.forward_paged(ids, step, rows) returns, computed by the plan."""
    return plan.step(ids, step.slot_mapping, step.block_tables, step.context_lens, step.query_start_loc,
                     step.decode, rows, num_threads)
