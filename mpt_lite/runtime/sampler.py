"""Choosing the next tokens of a whole batch from its logits at once: greedy, temperature, top-k,
top-p and repetition penalty, each row with its own settings and random stream."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import math

import torch

from .arguments import check_flag

MAX_LOGPROBS = 20  # alternatives per token, as in the OpenAI API
# torch.Generator.manual_seed takes [-2**63, 2**64 - 1]; seeds stay in the signed 64-bit range (as
# OpenAI's API says) so that generate() can add a row's index to one.
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 63) - 1


def _check_number(name: str, value: object, low: float, high: float | None = None, low_open: bool = False) -> None:
    """A finite real number in range, or a TypeError/ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (low_open and value == low) or (high is not None and value > high):
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        span = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {span}, got {value}")


@dataclass
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from each token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted once per time a token was generated
    logprobs: int | None = None  # record each chosen token's log-probability and this many alternatives

    def __post_init__(self) -> None:
        check_flag("do_sample", self.do_sample)
        _check_number("temperature", self.temperature, low=0.0)
        if self.top_k is not None:
            _check_int("top_k", self.top_k, low=0)
        _check_number("top_p", self.top_p, low=0.0, low_open=True, high=1.0)
        _check_number("repetition_penalty", self.repetition_penalty, low=0.0, low_open=True)
        if self.seed is not None:
            _check_int("seed", self.seed, low=SEED_MIN, high=SEED_MAX)
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -2.0 <= v <= 2.0:
                raise ValueError(f"{name} must be a number in [-2, 2], got {v!r}")
        if self.logprobs is not None and (isinstance(self.logprobs, bool) or not isinstance(self.logprobs, int)
                                          or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise ValueError(f"logprobs must be an integer in [0, {MAX_LOGPROBS}] (or None), got {self.logprobs!r}")
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


def _argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """Each row's argmax (the first of equal maxima, as torch's). On the CPU one row at a time: torch splits a
    many-row argmax across its OpenMP threads, whose workers then spin (unless OMP_WAIT_POLICY was passive before
    torch loaded) on the cores the kernel pool needs next: 9% of a batch-2 decode step on two cores."""
    if logits.device.type != "cpu" or logits.shape[0] == 1:
        return logits.argmax(dim=-1)
    return torch.stack([row.argmax() for row in logits])


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


def apply_presence_frequency(logits: torch.Tensor, outputs: Sequence[Sequence[int]],
                             params: Sequence[SamplingParams]) -> torch.Tensor:
    """OpenAI's penalties over the tokens each row has generated so far (not its prompt):
    logit -= frequency_penalty * count + presence_penalty * (count > 0)."""
    rows = [i for i, p in enumerate(params) if (p.presence_penalty or p.frequency_penalty) and outputs[i]]
    if not rows:
        return logits
    logits = logits.clone()
    for i in rows:
        ids, counts = torch.tensor(outputs[i], dtype=torch.long).unique(return_counts=True)
        p = params[i]
        penalty = p.frequency_penalty * counts.float() + p.presence_penalty
        logits[i, ids.to(logits.device)] -= penalty.to(logits.device)
    return logits


def sample_batch(logits: torch.Tensor, params: Sequence[SamplingParams],
                 generators: Sequence[torch.Generator | None],
                 histories: Sequence[Sequence[int]] | None = None,
                 outputs: Sequence[Sequence[int]] | None = None) -> list[int]:
    """logits (rows, vocab) on any device -> one token id per row. Greedy rows take the argmax;
    sampled rows draw from their own generator (CPU), so a seeded row is reproducible whatever
    else shares its batch."""
    n = logits.shape[0]
    if n == 0:
        return []
    logits = logits.float()
    if histories is not None:
        logits = apply_repetition_penalty(logits, histories, [p.repetition_penalty for p in params])
    if outputs is not None:
        logits = apply_presence_frequency(logits, outputs, params)
    picked = _argmax_rows(logits)
    sampled = [i for i, p in enumerate(params) if p.do_sample]
    if sampled:
        idx = torch.tensor(sampled, device=logits.device)
        if logits.device.type == "cpu":  # one row at a time, as _argmax_rows (no OpenMP region); the same draws
            draws = torch.cat([_draw(logits[i:i + 1], [params[i]], [generators[i]]) for i in sampled])
        else:
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
