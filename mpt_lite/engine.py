"""Engine: continuous batching over the paged KV cache.

Requests join and leave between steps. Each step runs one forward pass over a flat batch with
no padding: every running sequence contributes its new tokens (one while decoding, a chunk of
its prompt while prefilling), so sequences of different lengths decode together. When the cache
budget runs out, the most recently admitted sequence is preempted: its blocks are freed and it
is recomputed from its tokens (prompt plus what it generated) once memory allows, which leaves
greedy output unchanged. Full blocks are shared between requests with a common prefix.

    engine = mpt_lite.Engine(model, max_bytes=2**30)
    a = engine.add_request(prompt_ids_a, max_new_tokens=32)
    b = engine.add_request(prompt_ids_b, max_new_tokens=8)
    for req, token in engine.run():   # (request, new token) events as they are produced
        ...
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from .kv_cache import DEFAULT_BLOCK_SIZE, CacheExhaustedError, PagedKVCache, PagedStep, SeqBlocks
from .threads import limit_torch_threads
from .sampling import SamplingParams, mask_beyond_tokenizer, next_tokens

DEFAULT_MAX_BYTES = 4 << 30


@dataclass(eq=False)
class Request:
    id: int
    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams
    eos: frozenset[int]
    stop_fn: Callable[[list[int]], bool] | None = None
    output: list[int] = field(default_factory=list)  # generated tokens (an eos that ended it included)
    finish_reason: str | None = None  # "length", "eos" or "stop"
    blocks: SeqBlocks | None = None
    generator: torch.Generator | None = None
    num_preemptions: int = 0

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Engine:
    def __init__(self, model: Any, *, block_size: int = DEFAULT_BLOCK_SIZE, num_blocks: int | None = None,
                 max_bytes: int | None = None, kv_dtype: torch.dtype | None = None, max_num_seqs: int = 64,
                 max_batch_tokens: int = 2048, prefix_caching: bool = True) -> None:
        if not hasattr(model, "forward_paged") or not hasattr(model, "logits"):
            raise TypeError(f"Engine needs an MptForCausalLM, got {type(model).__name__}")
        if not isinstance(max_num_seqs, int) or max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be a positive integer, got {max_num_seqs!r}")
        if not isinstance(max_batch_tokens, int) or max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be a positive integer, got {max_batch_tokens!r}")
        cfg = model.config
        if kv_dtype is None:
            kv_dtype = model.dtype if model.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
        if num_blocks is None and max_bytes is None:
            max_bytes = DEFAULT_MAX_BYTES
        self.model = model
        self.cache = PagedKVCache(cfg.n_layers, cfg.kv_n_heads, cfg.head_dim, block_size=block_size,
                                  num_blocks=num_blocks, max_bytes=max_bytes, dtype=kv_dtype,
                                  prefix_caching=prefix_caching, device=model.device)
        self.max_num_seqs, self.max_batch_tokens = max_num_seqs, max_batch_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._ids = itertools.count()
        self.stats = {"steps": 0, "computed_tokens": 0, "cached_prompt_tokens": 0, "preemptions": 0}

    # ---- requests ----
    def add_request(self, prompt: Sequence[int] | torch.Tensor, max_new_tokens: int = 64, *,
                    params: SamplingParams | None = None, eos_token_id: int | Sequence[int] | None = None,
                    stop_fn: Callable[[list[int]], bool] | None = None, **sampling: Any) -> Request:
        """Queues a prompt (token ids); sampling options as SamplingParams (do_sample, temperature,
        top_k, top_p, repetition_penalty, seed). The request joins at the next step."""
        if isinstance(prompt, torch.Tensor):
            if prompt.dim() != 1 or prompt.is_floating_point():
                raise ValueError(f"a prompt tensor must be 1-D integer token ids, got {prompt.dtype} {tuple(prompt.shape)}")
            prompt = prompt.tolist()
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("the prompt has no tokens")
        vocab = self.model.config.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise IndexError(f"token id {bad[0]} is out of range for a vocabulary of {vocab}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
        total, limit = len(prompt) + max_new_tokens, self.model.config.max_seq_len
        if total > limit:
            raise ValueError(
                f"the prompt ({len(prompt)} tokens) plus max_new_tokens={max_new_tokens} exceed max_seq_len={limit}; "
                "lower max_new_tokens or load with a larger max_seq_len (from_pretrained(..., max_seq_len=N))")
        need = self.cache.blocks_for(total)
        if need > self.cache.num_blocks:
            raise CacheExhaustedError(
                f"a request of {total} tokens needs {need} KV blocks, the whole cache holds {self.cache.num_blocks}; "
                "raise the budget (num_blocks / max_bytes)")
        params = params if params is not None else SamplingParams(**sampling)
        if eos_token_id is None:
            eos = frozenset()
        elif isinstance(eos_token_id, int):
            eos = frozenset([eos_token_id])
        else:
            eos = frozenset(int(e) for e in eos_token_id)
        req = Request(next(self._ids), prompt, max_new_tokens, params, eos, stop_fn)
        req.generator = params.generator(torch.device("cpu"))
        if max_new_tokens == 0:
            req.finish_reason = "length"
        else:
            self.waiting.append(req)
        return req

    def abort(self, req: Request) -> None:
        """Drops a request between steps (a client went away)."""
        if req in self.running:
            self.running.remove(req)
            self._free(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        if not req.finished:
            req.finish_reason = "abort"

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- running ----
    def run(self) -> Iterator[tuple[Request, int]]:
        """Steps until every request has finished, yielding (request, token) as tokens appear."""
        while self.has_unfinished():
            yield from self.step()

    def stream(self, req: Request) -> Iterator[int]:
        """The tokens of one request as they are produced (other requests advance too)."""
        while not req.finished:
            if not self.has_unfinished():
                return
            for r, tok in self.step():
                if r is req:
                    yield tok

    def step(self) -> list[tuple[Request, int]]:
        """Schedules and runs one forward pass; returns the (request, new token) pairs it produced."""
        with limit_torch_threads(self.model.torch_threads):
            return self._step()

    def _step(self) -> list[tuple[Request, int]]:
        batch = self._schedule()
        if not batch:
            return []
        reqs = [r for r, _, _ in batch]
        starts = [a for _, a, _ in batch]
        ends = [b for _, _, b in batch]
        ids = torch.tensor([t for r, a, b in batch for t in r.tokens[a:b]], dtype=torch.long)
        step = PagedStep(self.cache, [r.blocks for r in reqs], starts, ends)
        sample = [i for i, (r, _, b) in enumerate(batch) if b == len(r.tokens)]
        with torch.inference_mode():
            logits = self.model.forward_paged(ids, step, step.last_rows[sample]).float().cpu()
        self.stats["steps"] += 1
        self.stats["computed_tokens"] += len(ids)
        for r, _, b in batch:
            self.cache.commit(r.blocks, r.tokens, b)
        events = []
        for row, tok in zip(sample, self._sample([reqs[i] for i in sample], logits)):
            r = reqs[row]
            r.output.append(tok)
            events.append((r, tok))
            if tok in r.eos:
                r.finish_reason = "eos"
            elif len(r.output) >= r.max_new_tokens:
                r.finish_reason = "length"
            elif r.stop_fn is not None and r.stop_fn(r.output):
                r.finish_reason = "stop"
            if r.finished:
                self.running.remove(r)
                self._free(r)
        return events

    # ---- internals ----
    def _free(self, req: Request) -> None:
        if req.blocks is not None:
            self.cache.release(req.blocks)
            req.blocks = None

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self._free(req)
        req.num_preemptions += 1
        self.stats["preemptions"] += 1
        self.waiting.appendleft(req)

    def _schedule(self) -> list[tuple[Request, int, int]]:
        budget = self.max_batch_tokens
        batch: list[tuple[Request, int, int]] = []
        for req in list(self.running):
            if budget == 0:
                break
            if req not in self.running:  # preempted for an earlier request this step
                continue
            start = req.blocks.num_cached
            end = min(len(req.tokens), start + budget)
            while not self.cache.can_grow(req.blocks, end):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is req:
                    break
            else:
                self.cache.grow(req.blocks, end)
                batch.append((req, start, end))
                budget -= end - start
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            blocks = self.cache.match_prefix(req.tokens)
            start = blocks.num_cached
            end = min(len(req.tokens), start + budget)
            if not self.cache.can_grow(blocks, end):
                self.cache.release(blocks)
                if not batch and not self.running:  # cannot happen: add_request checked the request fits alone
                    raise CacheExhaustedError("internal error: a request does not fit an empty KV cache")
                break
            self.cache.grow(blocks, end)
            self.waiting.popleft()
            req.blocks = blocks
            self.stats["cached_prompt_tokens"] += start
            self.running.append(req)
            batch.append((req, start, end))
            budget -= end - start
        return batch

    def _sample(self, reqs: list[Request], logits: torch.Tensor) -> list[int]:
        tok = getattr(self.model, "tokenizer", None)
        logits = mask_beyond_tokenizer(logits, len(tok) if tok is not None else None)
        out = [0] * len(reqs)
        simple = [i for i, r in enumerate(reqs) if not r.params.do_sample and r.params.repetition_penalty == 1.0]
        if simple:
            picked = logits[simple].argmax(dim=-1).tolist()
            for i, t in zip(simple, picked):
                out[i] = t
        for i, r in enumerate(reqs):
            if i in simple:
                continue
            history = torch.tensor([r.tokens], dtype=torch.long)
            out[i] = int(next_tokens(logits[i:i + 1], history, r.params, r.generator)[0])
        return out
