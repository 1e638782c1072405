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
from typing import Any, Callable, Iterator, Sequence

import torch

from .block_manager import DEFAULT_BLOCK_SIZE, CacheExhaustedError
from .constraints import Constraint, constrain_logits
from .kv_cache import PagedKVCache, PagedStep
from .logprobs import record_logprobs
from .native_step import build_plan, env_allows_native, native_logits, unsupported_reason
from .request import Request
from .sampler import SamplingParams, mask_beyond_tokenizer, sample_batch
from .scheduler import Scheduler

DEFAULT_MAX_BYTES = 4 << 30

__all__ = ["Engine", "Request", "DEFAULT_MAX_BYTES"]


class Engine:
    def __init__(self, model: Any, *, block_size: int = DEFAULT_BLOCK_SIZE, num_blocks: int | None = None,
                 max_bytes: int | None = None, kv_dtype: torch.dtype | None = None, max_num_seqs: int = 64,
                 max_batch_tokens: int = 2048, prefix_caching: bool = True, native_step: bool | None = None) -> None:
        """native_step: None runs each step as one native call when the model allows it (see
        native_step.py; MPT_LITE_NATIVE_STEP=0 turns it off), False always runs the torch path
        (model.forward_paged), True insists on the native step (ValueError when unsupported)."""
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
        self.scheduler = Scheduler(self.cache, max_num_seqs, max_batch_tokens)
        self.max_num_seqs, self.max_batch_tokens = max_num_seqs, max_batch_tokens
        self._ids = itertools.count()
        self._counts = {"steps": 0, "computed_tokens": 0}
        tok = getattr(model, "tokenizer", None)
        self._n_text_tokens = len(tok) if tok is not None else None
        if native_step not in (None, True, False):
            raise TypeError(f"native_step must be None, True or False, got {native_step!r}")
        reason = unsupported_reason(model, self.cache) if native_step is not False else "native_step=False"
        if native_step is None and reason is None and not env_allows_native():
            reason = "MPT_LITE_NATIVE_STEP=0"
        if native_step is True and reason is not None:
            raise ValueError(f"native_step=True, but this model runs only on the torch path: {reason}")
        self.native_step_fallback_reason = reason  # None: steps run natively
        self._plan = None  # built on the first step

    @property
    def uses_native_step(self) -> bool:
        return self.native_step_fallback_reason is None

    @property
    def waiting(self):
        return self.scheduler.waiting

    @property
    def running(self) -> list[Request]:
        return self.scheduler.running

    @property
    def stats(self) -> dict[str, int]:
        return {**self._counts, **self.scheduler.stats}

    # ---- requests ----
    def add_request(self, prompt: Sequence[int] | torch.Tensor, max_new_tokens: int = 64, *,
                    params: SamplingParams | None = None, eos_token_id: int | Sequence[int] | None = None,
                    stop_fn: Callable[[list[int]], bool] | None = None, constraint: Constraint | None = None,
                    **sampling: Any) -> Request:
        """Queues a prompt (token ids); sampling options as SamplingParams (do_sample, temperature,
        top_k, top_p, repetition_penalty, seed). A constraint (constraints.constraint_factory)
        limits the output to a grammar. The request joins at the next step."""
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
        req = Request(next(self._ids), prompt, max_new_tokens, params, eos, stop_fn, constraint=constraint)
        req.generator = params.generator(torch.device("cpu"))
        if max_new_tokens == 0:
            req.finish_reason = "length"
        else:
            self.scheduler.add(req)
        return req

    def abort(self, req: Request) -> None:
        """Drops a request between steps (a client went away)."""
        self.scheduler.finish(req)
        if not req.finished:
            req.finish_reason = "abort"

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

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
        batch = self.scheduler.schedule()
        if not batch:
            return []
        ids = torch.tensor([t for s in batch for t in s.req.tokens[s.start:s.end]], dtype=torch.long)
        step = PagedStep(self.cache, [s.req.blocks for s in batch], [s.start for s in batch], [s.end for s in batch],
                         num_threads=getattr(self.model, "num_threads", None))
        rows = [i for i, s in enumerate(batch) if s.samples]
        if self.uses_native_step:
            if self._plan is None:
                self._plan = build_plan(self.model, self.cache)
            logits = native_logits(self._plan, ids, step, step.last_rows[rows].to(torch.int64),
                                   getattr(self.model, "num_threads", None))
        else:
            with torch.inference_mode():
                logits = self.model.forward_paged(ids, step, step.last_rows[rows])
        self._counts["steps"] += 1
        self._counts["computed_tokens"] += len(ids)
        for s in batch:
            self.cache.commit(s.req.blocks, s.req.tokens, s.end)
        reqs = [batch[i].req for i in rows]
        raw = logits
        logits = mask_beyond_tokenizer(logits, self._n_text_tokens)
        logits = constrain_logits(logits, [r.constraint for r in reqs], [r.eos for r in reqs])
        tokens = sample_batch(logits, [r.params for r in reqs], [r.generator for r in reqs],
                              [r.tokens for r in reqs], [r.output for r in reqs])
        record_logprobs(raw, reqs, tokens)
        events = []
        for r, tok in zip(reqs, tokens):
            r.append(tok)
            events.append((r, tok))
            if r.finished:
                self.scheduler.finish(r)
        return events
