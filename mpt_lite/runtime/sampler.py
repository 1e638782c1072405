"""Choosing the next tokens of a whole batch from its logits at once: greedy, temperature, top-k,
top-p and repetition penalty, each row with its own settings and random stream."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise ValueError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.repetition_penalty, (int, float)) or self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if self.temperature == 0:  # temperature 0 means greedy, as in the OpenAI API
            self.do_sample = False

    def generator(self, device: torch.device) -> torch.Generator | None:
        if not self.do_sample:
            return None
        g = torch.Generator(device=device)
        if self.seed is not None:
            g.manual_seed(int(self.seed))
        else:
            g.seed()
        return g


def mask_beyond_tokenizer(logits: torch.Tensor, n_tokens: int | None) -> torch.Tensor:
    """Real MPT checkpoints pad the embedding to a multiple of 64 (50432 rows for 50277 tokens):
    rows at and beyond ``n_tokens`` have no text, so they are never chosen (logit -inf)."""
    if n_tokens is None or n_tokens >= logits.shape[-1]:
        return logits
    return logits.index_fill(-1, torch.arange(n_tokens, logits.shape[-1], device=logits.device), float("-inf"))


def apply_repetition_penalty(logits: torch.Tensor, histories: Sequence[Sequence[int]],
                             penalties: Sequence[float]) -> torch.Tensor:
    """As in transformers (CTRL): the logits of tokens a row has seen shrink by its penalty."""
    rows = [i for i, p in enumerate(penalties) if p != 1.0]
    if not rows:
        return logits
    logits = logits.clone()
    for i in rows:
        seen_ids = torch.tensor(histories[i], dtype=torch.long, device=logits.device).unique()
        seen = logits[i, seen_ids]
        p = penalties[i]
        logits[i, seen_ids] = torch.where(seen < 0, seen * p, seen / p)
    return logits


def sample_batch(logits: torch.Tensor, params: Sequence[SamplingParams],
                 generators: Sequence[torch.Generator | None],
                 histories: Sequence[Sequence[int]] | None = None) -> list[int]:
    """logits (rows, vocab) on any device -> one token id per row. Greedy rows take the argmax;
    sampled rows draw from their own generator (CPU), so a seeded row is reproducible whatever
    else shares its batch."""
    n = logits.shape[0]
    if n == 0:
        return []
    logits = logits.float()
    if histories is not None:
        logits = apply_repetition_penalty(logits, histories, [p.repetition_penalty for p in params])
    picked = logits.argmax(dim=-1)
    sampled = [i for i, p in enumerate(params) if p.do_sample]
    if sampled:
        idx = torch.tensor(sampled, device=logits.device)
        draws = _draw(logits[idx], [params[i] for i in sampled], [generators[i] for i in sampled])
        picked = picked.index_copy(0, idx, draws)
    return picked.tolist()


def probabilities(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """The distribution (rows, vocab) each sampled row draws from: temperature, top-k, top-p, as
    sample_batch applies them (repetition penalty is the caller's, see apply_repetition_penalty)."""
    probs, order = _filtered(logits.float(), list(params))
    probs = probs / probs.sum(-1, keepdim=True)
    return torch.zeros_like(probs).scatter_(1, order, probs)


def _filtered(logits: torch.Tensor, params: list[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities in descending order of logit after temperature, top-k and top-p, and that order."""
    dev = logits.device
    temp = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=dev)
    logits = logits / temp[:, None]
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    vocab = logits.shape[-1]
    top_k = torch.tensor([min(p.top_k, vocab) if p.top_k else vocab for p in params], device=dev)
    rank = torch.arange(vocab, device=dev)[None, :]
    sorted_logits = sorted_logits.masked_fill(rank >= top_k[:, None], float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=dev)
    before = probs.cumsum(dim=-1) - probs  # keep the first token past top_p
    probs = probs.masked_fill((before >= top_p[:, None]) & (top_p[:, None] < 1.0), 0.0)
    return probs, order


def _draw(logits: torch.Tensor, params: list[SamplingParams], gens: list[torch.Generator | None]) -> torch.Tensor:
    probs, order = _filtered(logits, params)
    dev, vocab = logits.device, logits.shape[-1]
    cdf = probs.cumsum(dim=-1)
    u = torch.cat([torch.rand(1, generator=g) for g in gens]).to(dev) * cdf[:, -1]
    pos = torch.searchsorted(cdf, u[:, None]).clamp(max=vocab - 1)
    # a zero-probability token can never be drawn: step back over them (u lands on a flat stretch
    # only through rounding)
    pos = torch.minimum(pos, (probs > 0).long().cumsum(-1).argmax(-1, keepdim=True))
    return order.gather(1, pos).squeeze(1)
