"""The building blocks of an MPT block in plain torch: norms, ALiBi, attention, MLP.

Math follows llm-foundry (MosaicML's reference); where transformers' port agrees, so do we."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MptConfig
from ..kernels import causal_alibi_attention, row_ops
from .attention_backend import PagedAttention


def alibi_slopes(n_heads: int, alibi_bias_max: float = 8) -> torch.Tensor:
    """Per-head ALiBi slopes (float32). Non-power-of-two head counts interleave the slopes of the
    next power of two: odd positions first, then even, as llm-foundry's gen_slopes does."""
    n_pow2 = 2 ** math.ceil(math.log2(n_heads))
    m = torch.arange(1, n_pow2 + 1, dtype=torch.float32) * (alibi_bias_max / n_pow2)
    slopes = 1.0 / torch.pow(2, m)
    if n_pow2 != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes


SMALL_NORM = 1 << 15  # elements: below this a norm is computed without entering torch's OpenMP pool


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU. Small tensors avoid torch's oneDNN kernel, which opens an OpenMP parallel
    region for any size (see MptNorm)."""
    if x.numel() > SMALL_NORM or x.is_cuda:
        return F.gelu(x)
    return x * 0.5 * (1.0 + torch.erf(x * 0.7071067811865476))


class MptNorm(nn.Module):
    """LayerNorm or RMSNorm (llm-foundry's norm_type), with a bias only when no_bias is false."""

    def __init__(self, dim: int, eps: float, norm_type: str, bias: bool) -> None:
        super().__init__()
        self.eps = eps
        self.rms = "rmsnorm" in norm_type
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias and not self.rms else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            xf = x.float()
            y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            return (y * self.weight.float()).to(x.dtype)
        if x.numel() > SMALL_NORM or x.is_cuda:
            if row_ops.applies(x, self.weight, self.bias):  # on the kernel pool, not in an OpenMP region
                return row_ops.layer_norm(x, self.weight, self.bias, self.eps)
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        # torch's layer_norm opens an OpenMP parallel region even for one row; on a small machine
        # its threads then wait for cores that mpt_lite's kernel pool holds (measured: 10x slower
        # decode on 2 cores). Elementwise ops and reductions this small stay on the calling thread.
        xf = x.float()
        mu = xf.mean(-1, keepdim=True)
        d = xf - mu
        y = d * torch.rsqrt(d.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


def attention_mask_4d(
    attention_mask: torch.Tensor | None, batch: int, q_len: int, past_len: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean (batch, 1, q_len, past_len + q_len) mask, True where a query may NOT look."""
    k_len = past_len + q_len
    q_pos = torch.arange(past_len, k_len, device=device).view(q_len, 1)
    k_pos = torch.arange(k_len, device=device).view(1, k_len)
    masked = (k_pos > q_pos).view(1, 1, q_len, k_len)
    if attention_mask is not None:
        masked = masked | (attention_mask == 0).view(batch, 1, 1, k_len)
    elif not masked.any():
        return None
    return masked


class CausalMask:
    """The mask of whole prompts with no padding and no cached prefix (query i sees keys 0..i), passed
    down instead of its tensor so that a CPU float32 model can run the paged prefill kernel on them
    (kernels.causal_alibi_attention: at 512 tokens faster than torch's attention with the additive
    ALiBi mask). tensor() is the boolean mask of attention_mask_4d for the other paths."""

    def __init__(self, batch: int, q_len: int, device: torch.device) -> None:
        self.batch, self.q_len, self.device = batch, q_len, device

    def tensor(self) -> torch.Tensor | None:
        return attention_mask_4d(None, self.batch, self.q_len, 0, self.device)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    slopes: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """softmax(q k^T * scale + alibi, masked) v for q (B,H,S,D), k/v (B,KV,T,D) -> (B,H,S,D).

    The ALiBi bias is slope * (key_index - last_key_index), computed for this call only; a masked
    score becomes the dtype's minimum (not -inf), so a query with every key masked (a left-pad
    position) averages all values, exactly as transformers does."""
    n_heads, n_kv = q.shape[1], k.shape[1]
    if n_kv != n_heads:
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
    t = k.shape[2]
    alibi = None if slopes is None else \
        slopes.view(1, n_heads, 1, 1) * torch.arange(1 - t, 1, device=q.device, dtype=torch.float32).view(1, 1, 1, t)
    if q.shape[2] >= SDPA_MIN_QUERIES and q.dtype == torch.float32:
        return _attend_fused(q, k, v, scale, alibi, mask)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if alibi is not None:
        scores = scores + alibi.to(scores.dtype)
    if mask is not None:
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


# From this many queries (a prompt, not a decode step) float32 attention runs through torch's fused
# scaled_dot_product_attention (2-3x faster at 512 tokens on 2 cores: no (S, T) score, probability and
# mask tensors in memory one after another) with the ALiBi bias and the mask folded into one additive
# float mask: the same scores and the same masked value (the dtype's minimum), summed in another order.
SDPA_MIN_QUERIES = 64


def _attend_fused(q, k, v, scale, alibi, mask):
    """attend()'s float32 path for many queries; alibi: its (1, H, 1, T) bias or None."""
    bias = alibi
    if mask is not None:
        h, s, t = q.shape[1], q.shape[2], k.shape[2]
        base = torch.zeros((), device=q.device) if alibi is None else alibi
        bias = base.expand(mask.shape[0], h, s, t).masked_fill(mask, torch.finfo(torch.float32).min)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


class MptAttention(nn.Module):
    def __init__(self, config: MptConfig, linear: type = nn.Linear) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.kv_n_heads = config.kv_n_heads
        self.head_dim = config.head_dim
        self.d_model = config.d_model
        self.clip_qkv = config.attn_config["clip_qkv"]
        self.scale = config.softmax_scale
        bias = not config.no_bias
        kv_dim = self.kv_n_heads * self.head_dim
        self.Wqkv = linear(self.d_model, self.d_model + 2 * kv_dim, bias=bias)
        if config.attn_config["qk_ln"]:
            self.q_ln = MptNorm(self.d_model, config.layer_norm_epsilon, config.norm_type, bias)
            self.k_ln = MptNorm(kv_dim, config.layer_norm_epsilon, config.norm_type, bias)
        else:
            self.q_ln = self.k_ln = None
        self.out_proj = linear(self.d_model, self.d_model, bias=bias)
        self.num_threads: int | None = None  # the CPU attention kernel's (MptPreTrainedModel.num_threads)

    def forward(
        self,
        x: torch.Tensor,
        slopes: torch.Tensor | None,
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, s, _ = x.shape
        qkv = self.Wqkv(x)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        kv_dim = self.kv_n_heads * self.head_dim
        widths = [self.d_model, kv_dim, kv_dim]
        if qkv.numel() > SMALL_NORM and row_ops.applies(qkv):  # contiguous pieces, copied on the kernel pool
            q, k, v = row_ops.split_columns(qkv, widths)
        else:
            q, k, v = qkv.split(widths, dim=-1)
        if self.q_ln is not None:
            q, k = self.q_ln(q), self.k_ln(k)
        if isinstance(past, PagedAttention):  # the engine's flat batch: b == 1, s tokens of many sequences
            ctx = past.attend(q.reshape(b * s, self.n_heads, self.head_dim),
                              k.reshape(b * s, self.kv_n_heads, self.head_dim),
                              v.reshape(b * s, self.kv_n_heads, self.head_dim), self.scale, slopes)
            return self.out_proj(ctx.to(x.dtype).reshape(b, s, self.d_model)), past
        q = q.reshape(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(b, s, self.kv_n_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, s, self.kv_n_heads, self.head_dim).transpose(1, 2)
        if isinstance(mask, CausalMask):
            if past is None and not q.is_cuda and q.dtype == torch.float32:
                flat = (t.transpose(1, 2).reshape(b * s, -1, self.head_dim) for t in (q, k, v))
                ctx = causal_alibi_attention(*flat, [s] * b, self.scale, slopes, num_threads=self.num_threads)
                return self.out_proj(ctx.reshape(b, s, self.d_model).to(x.dtype)), (k, v)
            mask = mask.tensor()
        if past is not None:
            k = torch.cat([past[0].to(k.dtype), k], dim=2)
            v = torch.cat([past[1].to(v.dtype), v], dim=2)
        ctx = attend(q, k, v, self.scale, slopes, mask)
        ctx = ctx.transpose(1, 2).reshape(b, s, self.d_model)
        return self.out_proj(ctx), (k, v)


class MptMLP(nn.Module):
    def __init__(self, config: MptConfig, linear: type = nn.Linear) -> None:
        super().__init__()
        hidden = config.ffn_hidden_size
        self.up_proj = linear(config.d_model, hidden, bias=not config.no_bias)
        self.down_proj = linear(hidden, config.d_model, bias=not config.no_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up_proj(x)
        if h.numel() > SMALL_NORM and row_ops.applies(h) and h.is_contiguous():
            return self.down_proj(row_ops.gelu_(h))  # in place, on the kernel pool (not in an OpenMP region)
        return self.down_proj(gelu(h))


class MptBlock(nn.Module):
    def __init__(self, config: MptConfig, linear: type = nn.Linear) -> None:
        super().__init__()
        bias = not config.no_bias
        self.norm_1 = MptNorm(config.d_model, config.layer_norm_epsilon, config.norm_type, bias)
        self.attn = MptAttention(config, linear)
        self.norm_2 = MptNorm(config.d_model, config.layer_norm_epsilon, config.norm_type, bias)
        self.ffn = MptMLP(config, linear)

    def forward(self, x, slopes, mask, past):
        a, present = self.attn(self.norm_1(x), slopes, mask, past)
        x = residual(x, a)
        x = residual(x, self.ffn(self.norm_2(x)))
        return x, present


def residual(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + y; large float32 CPU sums on the kernel pool, written into y (the branch's own fresh output)."""
    if x.numel() > SMALL_NORM and x.shape == y.shape and row_ops.applies(x, y) and x.is_contiguous() \
            and y.is_contiguous():
        return row_ops.add_(y, x)
    return x + y
