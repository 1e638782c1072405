"""Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalty."""
from __future__ import annotations

from dataclasses import dataclass

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


def next_tokens(logits: torch.Tensor, history: torch.Tensor, p: SamplingParams,
                gen: torch.Generator | None) -> torch.Tensor:
    """logits (batch, vocab) float32, history (batch, tokens) -> next ids (batch,)."""
    if p.repetition_penalty != 1.0:  # as in transformers (CTRL): shrink the logits of seen tokens
        seen = torch.gather(logits, 1, history)
        seen = torch.where(seen < 0, seen * p.repetition_penalty, seen / p.repetition_penalty)
        logits = logits.scatter(1, history, seen)
    if not p.do_sample:
        return logits.argmax(dim=-1)
    logits = logits / p.temperature
    if p.top_k:
        k = min(p.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= p.top_p  # keep the first token past top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(1)


def mask_beyond_tokenizer(logits: torch.Tensor, n_tokens: int | None) -> torch.Tensor:
    """Real MPT checkpoints pad the embedding to a multiple of 64 (50432 rows for 50277 tokens):
    rows at and beyond ``n_tokens`` have no text, so they are never chosen (logit -inf)."""
    if n_tokens is None or n_tokens >= logits.shape[-1]:
        return logits
    return logits.index_fill(-1, torch.arange(n_tokens, logits.shape[-1], device=logits.device), float("-inf"))
