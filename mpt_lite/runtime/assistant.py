"""Assistant-model drafts: a smaller MPT sharing the tokenizer proposes the next tokens from its
own paged KV cache, and the target verifies them in one step (speculative.py).

Each request with an assistant has an AssistantDrafter: its sequence in the assistant's cache
catches up with the request's tokens (one chunk), drafts a token per assistant step, and after
verification keeps the K/V of the tokens that were accepted only. Greedy requests draft the
assistant's argmax; sampled ones draw from the assistant's distribution (the request's
temperature, top-k, top-p and repetition penalty), which the rejection rule then needs (`probs`)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .kv_budget import kv_dtype_of
from .kv_cache import PagedKVCache, PagedStep
from .sampler import SamplingParams, apply_repetition_penalty, mask_beyond_tokenizer, probabilities

DEFAULT_ASSISTANT_TOKENS = 5


class AssistantCache:
    """The assistant model and its paged KV cache, shared by the drafters of one engine."""

    def __init__(self, assistant: Any, target_config: Any, num_blocks: int, n_text_tokens: int | None) -> None:
        if not hasattr(assistant, "forward_paged") or not hasattr(assistant, "logits"):
            raise TypeError(f"assistant_model must be an MptForCausalLM, got {type(assistant).__name__}")
        cfg = assistant.config
        if cfg.vocab_size != target_config.vocab_size:
            raise ValueError(f"assistant_model has a vocabulary of {cfg.vocab_size} tokens, the model "
                             f"{target_config.vocab_size}: they must share the tokenizer")
        kv_dtype = kv_dtype_of(assistant)
        self.model = assistant
        self.cache = PagedKVCache(cfg.n_layers, cfg.kv_n_heads, cfg.head_dim, num_blocks=num_blocks, dtype=kv_dtype,
                                  prefix_caching=False, device=assistant.device)
        self.n_text_tokens = n_text_tokens

    def drafter(self, k: int, params: SamplingParams, generator: torch.Generator | None) -> "AssistantDrafter":
        return AssistantDrafter(self, k, params, generator)


class AssistantDrafter:
    """One request's drafts (the draft/update interface of prompt_lookup.LookupState, plus close):
    up to `k` tokens, one longer than the last accepted run, growing back by two on full acceptance."""

    def __init__(self, shared: AssistantCache, k: int, params: SamplingParams,
                 generator: torch.Generator | None) -> None:
        self.shared, self.k, self.cap = shared, k, k
        self.params, self.generator = params, generator
        self.probs: torch.Tensor | None = None  # sampled drafts: the distribution each was drawn from
        self.seq = shared.cache.match_prefix([])
        self._base = 0  # len(tokens) when the last draft was made
        self._pending = False  # that draft was not verified (its request was preempted before its step)

    def draft(self, tokens: Sequence[int], room: int) -> list[int]:
        return self.draft_many([(self, tokens, room)])[0]

    @staticmethod
    def draft_many(jobs: Sequence[tuple["AssistantDrafter", Sequence[int], int]]) -> list[list[int]]:
        """Drafts for several requests of one engine at once: each assistant pass runs every
        sequence still drafting (first its catch-up chunk, then one token each)."""
        wants = [d._prepare(tokens, room) for d, tokens, room in jobs]
        outs: list[list[int]] = [[] for _ in jobs]
        rows: list[list[torch.Tensor]] = [[] for _ in jobs]
        feed = [(list(tokens[d.seq.num_cached:]), d.seq.num_cached) for d, tokens, _ in jobs]
        if jobs:
            shared = jobs[0][0].shared
            with torch.inference_mode():
                while True:
                    active = [i for i, n in enumerate(wants) if len(outs[i]) < n]
                    if not active:
                        break
                    seqs = [jobs[i][0].seq for i in active]
                    starts = [feed[i][1] for i in active]
                    ends = [feed[i][1] + len(feed[i][0]) for i in active]
                    ids = torch.tensor([t for i in active for t in feed[i][0]], dtype=torch.long)
                    step = PagedStep(shared.cache, seqs, starts, ends)
                    logits = mask_beyond_tokenizer(shared.model.forward_paged(ids, step, step.last_rows),
                                                   shared.n_text_tokens)
                    for row, (i, end) in enumerate(zip(active, ends)):
                        d, tokens, _ = jobs[i]
                        shared.cache.commit(d.seq, (), end)
                        tok = d._pick(logits[row:row + 1], list(tokens) + outs[i], rows[i])
                        outs[i].append(tok)
                        feed[i] = ([tok], end)
        for (d, tokens, _), out, r in zip(jobs, outs, rows):
            if out:
                d._base, d._pending = len(tokens), True
                d.probs = torch.cat(r) if r else None
        return outs

    def _prepare(self, tokens: Sequence[int], room: int) -> int:
        """Rewinds to the real tokens and makes room; how many tokens to draft (0: none)."""
        n = min(self.cap, room)
        cache, model = self.shared.cache, self.shared.model
        if self._pending:  # the last draft was never verified: only the tokens before it are real
            self._rewind(self._base)
            self._pending = False
        self._rewind(len(tokens) - 1)  # at least the last token is fed: its logits give the first draft
        if n <= 0 or len(tokens) + n - 1 > model.config.max_seq_len or not cache.can_grow(self.seq, len(tokens) + n - 1):
            return 0
        cache.grow(self.seq, len(tokens) + n - 1)
        return n

    def _pick(self, logits: torch.Tensor, history: list[int], rows: list[torch.Tensor]) -> int:
        if not self.params.do_sample:
            return int(logits[0].argmax())
        logits = logits.float()
        if self.params.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, [history], [self.params.repetition_penalty])
        q = probabilities(logits, [self.params]).cpu()
        rows.append(q)
        return int(torch.multinomial(q[0], 1, generator=self.generator))

    def _rewind(self, n_tokens: int) -> None:
        self.seq.num_cached = min(self.seq.num_cached, n_tokens)
        self.shared.cache.truncate(self.seq, self.seq.num_cached)

    def update(self, drafted: int, accepted: int) -> None:
        """Keeps the assistant's K/V of the tokens that stayed: the request's earlier tokens and
        the accepted drafts (the last draft was never fed to the assistant)."""
        self._pending = False
        self._rewind(self._base + min(accepted, drafted - 1))
        self.cap = min(self.k, self.cap + 2) if accepted == drafted else max(1, accepted + 1)

    def close(self) -> None:
        self.shared.cache.release(self.seq)

