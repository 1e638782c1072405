"""Engine: continuous batching over the paged KV cache.

Requests join and leave between steps. Each step runs one forward pass over a flat batch with
no padding: every running sequence contributes its new tokens (one while decoding, a chunk of
its prompt while prefilling), so sequences of different lengths decode together. When the cache
budget runs out, the most recently admitted sequence is preempted: its blocks are freed and it
is recomputed from its tokens (prompt plus what it generated) once memory allows, which leaves
greedy output unchanged. Full blocks are shared between requests with a common prefix.

A request may shift its context (context_shift=True, n_keep: drop its oldest KV blocks after the
first n_keep tokens instead of passing max_seq_len; context_shift.py), draft tokens from itself
and verify them in the same step (prompt_lookup_num_tokens=K; speculative.py), and keep its
blocks when it finishes (keep_cache=True) so that a later request continues it (continue_from=)
computing only its new tokens, as a chat does turn after turn.

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
from .assistant import DEFAULT_ASSISTANT_TOKENS, AssistantCache
from .constraints import Constraint, constrain_logits
from .context_shift import check_context_shift
from .kv_budget import kv_dtype_of
from .kv_cache import PagedKVCache, PagedStep
from .logprobs import record_logprobs
from .cuda_graphs import CudaGraphDecoder, graphs_unsupported_reason
from .native_step import build_plan, env_allows_native, native_logits, unsupported_reason
from .prompt_lookup import LookupState
from .request import Request
from .sampler import SamplingParams, mask_beyond_tokenizer, sample_batch
from .scheduler import Scheduler
from .speculative import verify

DEFAULT_MAX_BYTES = 4 << 30

__all__ = ["Engine", "Request", "DEFAULT_MAX_BYTES"]


class Engine:
    def __init__(self, model: Any, *, block_size: int = DEFAULT_BLOCK_SIZE, num_blocks: int | None = None,
                 max_bytes: int | None = None, kv_dtype: torch.dtype | None = None, max_num_seqs: int = 64,
                 max_batch_tokens: int = 2048, prefix_caching: bool = True, native_step: bool | None = None,
                 assistant_model: Any = None, num_assistant_tokens: int = DEFAULT_ASSISTANT_TOKENS) -> None:
        """native_step: None runs each step as one native call when the model allows it (see
        native_step.py; MPT_LITE_NATIVE_STEP=0 turns it off), False always runs the torch path
        (model.forward_paged), True insists on the native step (ValueError when unsupported).
        assistant_model: a smaller MPT sharing the tokenizer that drafts tokens (speculative decoding).
        kv_dtype: float32, bfloat16, float16, int8, or torch.quint4x2 for the 4-bit cache (CPU only; a
        half of int8's bytes for K/V, plus a float32 scale per 32 values); None takes
        runtime.kv_budget.kv_dtype_of(model) (MPT_LITE_KV_DTYPE when set, else the model's float dtype,
        float32 for a quantized model)."""
        if not hasattr(model, "forward_paged") or not hasattr(model, "logits"):
            raise TypeError(f"Engine needs an MptForCausalLM, got {type(model).__name__}")
        if not isinstance(max_num_seqs, int) or max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be a positive integer, got {max_num_seqs!r}")
        if not isinstance(max_batch_tokens, int) or max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be a positive integer, got {max_batch_tokens!r}")
        cfg = model.config
        if kv_dtype is None:
            kv_dtype = kv_dtype_of(model)
        if num_blocks is None and max_bytes is None:
            max_bytes = DEFAULT_MAX_BYTES
        self.model = model
        self.cache = PagedKVCache(cfg.n_layers, cfg.kv_n_heads, cfg.head_dim, block_size=block_size,
                                  num_blocks=num_blocks, max_bytes=max_bytes, dtype=kv_dtype,
                                  prefix_caching=prefix_caching, device=model.device)
        self.scheduler = Scheduler(self.cache, max_num_seqs, max_batch_tokens)
        self.max_num_seqs, self.max_batch_tokens = max_num_seqs, max_batch_tokens
        self._ids = itertools.count()
        self._counts = {"steps": 0, "computed_tokens": 0, "drafted_tokens": 0, "accepted_tokens": 0}
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
        # decode steps on a GPU replay CUDA graphs (cuda_graphs.py); None: every step eager, and why
        self.cuda_graphs_fallback_reason = graphs_unsupported_reason(model, self.cache)
        self._graphs = CudaGraphDecoder(model, self.cache) if self.cuda_graphs_fallback_reason is None else None
        self.assistant = None  # drafts every greedy request (assistant.py)
        if assistant_model is not None:
            if not isinstance(num_assistant_tokens, int) or num_assistant_tokens < 1:
                raise ValueError(f"num_assistant_tokens must be a positive integer, got {num_assistant_tokens!r}")
            self.num_assistant_tokens = num_assistant_tokens
            self.assistant = AssistantCache(assistant_model, cfg, self.cache.num_blocks, self._n_text_tokens)

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
                    context_shift: bool = False, n_keep: int = 0, prompt_lookup_num_tokens: int | None = None,
                    keep_cache: bool = False, continue_from: Request | None = None, **sampling: Any) -> Request:
        """Queues a prompt (token ids); sampling options as SamplingParams (do_sample, temperature,
        top_k, top_p, repetition_penalty, seed). The request joins at the next step.

        constraint (constraints.constraint_factory): limits the output to a grammar.
        context_shift/n_keep: see context_shift.py. prompt_lookup_num_tokens: draft up to that many
        tokens a step. keep_cache: keep the blocks when finished (free them with release()).
        continue_from: a finished keep_cache request whose tokens this prompt starts with; its
        blocks pass to the new request, which computes only the tokens after them."""
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
        lookup = check_prompt_lookup(prompt_lookup_num_tokens)
        total, limit = len(prompt) + max_new_tokens, self.model.config.max_seq_len
        window = min(limit, self.cache.num_blocks * self.cache.block_size)
        if context_shift:
            check_context_shift(self.model.config, n_keep, window, self.cache.block_size)
        elif total > limit:
            raise ValueError(
                f"the prompt ({len(prompt)} tokens) plus max_new_tokens={max_new_tokens} exceed max_seq_len={limit}; "
                "lower max_new_tokens or load with a larger max_seq_len (from_pretrained(..., max_seq_len=N))")
        need = self.cache.blocks_for(total)
        if not context_shift and need > self.cache.num_blocks:
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
        if continue_from is not None:
            self._check_continuation(continue_from, prompt)
        if constraint is not None and lookup:
            raise ValueError("constrained decoding (json_schema/regex/grammar) does not combine with "
                             "prompt_lookup_num_tokens yet")
        generator = params.generator(torch.device("cpu"))
        drafter = LookupState(lookup) if lookup else None
        if self.assistant is not None and not lookup and constraint is None:
            if context_shift:
                raise ValueError("assistant_model and context_shift do not combine yet")
            drafter = self.assistant.drafter(self.num_assistant_tokens, params, generator)
        req = Request(next(self._ids), prompt, max_new_tokens, params, eos, stop_fn, constraint=constraint,
                      context_shift=bool(context_shift), n_keep=n_keep, window=window, drafter=drafter,
                      keep_cache=keep_cache)
        req.generator = generator
        if continue_from is not None:
            req.blocks, continue_from.blocks = continue_from.blocks, None
            # the last token is computed again: its logits are needed (its slot is the sequence's own)
            req.blocks.num_cached = min(req.blocks.num_cached, len(prompt) - 1)
        if max_new_tokens == 0:
            req.finish_reason = "length"
            if drafter is not None:
                drafter.close()
            if not keep_cache:
                self.release(req)
        else:
            self.scheduler.add(req)
        return req

    def _check_continuation(self, prev: Request, prompt: list[int]) -> None:
        if not isinstance(prev, Request):
            raise TypeError(f"continue_from takes a Request, got {type(prev).__name__}")
        if not prev.finished or prev.blocks is None:
            raise ValueError("continue_from needs a finished request added with keep_cache=True and not released "
                             "or continued yet")
        if prompt[:len(prev.tokens)] != prev.tokens:
            raise ValueError(f"the prompt does not start with the {len(prev.tokens)} tokens of the request it continues")

    def release(self, req: Request) -> None:
        """Frees the blocks a finished keep_cache request kept."""
        if not req.finished:
            raise ValueError("release() takes a finished request; abort() a running one")
        if req.blocks is not None:
            self.cache.release(req.blocks)
            req.blocks = None

    def abort(self, req: Request) -> None:
        """Drops a request between steps (a client went away)."""
        self.scheduler.finish(req)
        if not req.finished:
            req.finish_reason = "abort"
            if req.drafter is not None:
                req.drafter.close()

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
        ids = torch.tensor([t for s in batch for t in s.ids], dtype=torch.long)
        threads = getattr(self.model, "num_threads", None)
        step = PagedStep(self.cache, [s.req.blocks for s in batch], [s.start for s in batch], [s.end for s in batch],
                         num_threads=threads)
        plain = [s for s in batch if s.samples and not s.draft]
        drafted = [s for s in batch if s.samples and s.draft]
        ends = step.query_start_loc[1:].tolist()
        rows = [ends[i] - 1 for i, s in enumerate(batch) if s.samples and not s.draft]
        for i, s in enumerate(batch):
            if s.samples and s.draft:  # the logits after the last real token and after each drafted one
                rows.extend(range(ends[i] - 1 - len(s.draft), ends[i]))
        rows_t = torch.tensor(rows, dtype=torch.long)
        if self.uses_native_step:
            if self._plan is None:
                self._plan = build_plan(self.model, self.cache)
            logits = native_logits(self._plan, ids, step, rows_t, threads)
        else:
            logits = None
            if self._graphs is not None and not drafted and rows == list(range(len(ids))):
                logits = self._graphs.logits(ids, step)
            if logits is None:
                with torch.inference_mode():
                    logits = self.model.forward_paged(ids, step, rows_t)
        self._counts["steps"] += 1
        self._counts["computed_tokens"] += len(ids)
        for s in batch:
            if not s.draft:
                self.cache.commit(s.req.blocks, s.req.tokens, s.end)
        reqs = [s.req for s in plain]
        raw = logits[:len(plain)]
        logits = mask_beyond_tokenizer(logits, self._n_text_tokens)
        free = constrain_logits(logits[:len(plain)], [r.constraint for r in reqs], [r.eos for r in reqs])
        tokens = sample_batch(free, [r.params for r in reqs], [r.generator for r in reqs],
                              [r.tokens for r in reqs], [r.output for r in reqs])
        record_logprobs(raw, reqs, tokens)
        events = []
        for r, tok in zip(reqs, tokens):
            self._append(r, [tok], events)
        row = len(plain)
        for s in drafted:
            n = len(s.draft) + 1
            new, accepted = verify(logits[row:row + n], s.req, s.draft, s.req.drafter.probs)
            row += n
            self._counts["drafted_tokens"] += len(s.draft)
            self._counts["accepted_tokens"] += accepted
            s.req.drafted += len(s.draft)
            s.req.accepted += accepted
            s.req.drafter.update(len(s.draft), accepted)
            self._append(s.req, new, events, s.start, accepted)
        return events

    def _append(self, r: Request, new: list[int], events: list, start: int | None = None, accepted: int = 0) -> None:
        """Appends tokens until the request ends; after a verified draft (start given) records which
        of the computed K/V hold real tokens (the last real one and the accepted drafts) and frees
        the blocks of the rejected ones."""
        n = 0
        for tok in new:
            r.append(tok)
            events.append((r, tok))
            n += 1
            if r.finished:
                break
        if start is not None:
            self.cache.commit(r.blocks, r.tokens, min(start + 1 + min(accepted, n), len(r.tokens) - 1))
            self.cache.truncate(r.blocks, r.blocks.num_cached)
        if r.finished:
            self.scheduler.finish(r, keep_blocks=r.keep_cache)
            if r.drafter is not None:
                r.drafter.close()


def check_prompt_lookup(k: Any) -> int:
    if k is None:
        return 0
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"prompt_lookup_num_tokens must be None or a non-negative integer, got {k!r}")
    return k
