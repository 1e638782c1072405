"""Which sequences run in the next step, and how many of their tokens: running sequences first
(one token each while decoding, a chunk of the prompt while prefilling), then waiting ones while
the token budget, the sequence limit and the KV cache allow. When the cache runs out, the most
recently admitted sequence is preempted: its blocks are freed and it is recomputed from its
tokens later (greedy output is unchanged). A context-shift request drops its own oldest blocks
instead of passing its window or taking another sequence's memory (context_shift.py); a
prompt-lookup request in its decode phase runs its drafted tokens too (prompt_lookup.py)."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager, CacheExhaustedError
from .context_shift import fit_chunk, shift_for_memory
from .request import Request


@dataclass
class Scheduled:
    """One sequence's part of a step: it computes tokens [start, end) of req.tokens followed by
    `draft`, speculative tokens to verify (end counts them)."""

    req: Request
    start: int
    end: int
    draft: list[int] = field(default_factory=list)

    @property
    def samples(self) -> bool:  # its last token's logits are needed (the prompt is done)
        return self.end - len(self.draft) == len(self.req.tokens)

    @property
    def ids(self) -> list[int]:
        return self.req.tokens[self.start:self.end - len(self.draft)] + self.draft


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_batch_tokens: int) -> None:
        self.blocks = blocks
        self.max_num_seqs, self.max_batch_tokens = max_num_seqs, max_batch_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.stats = {"cached_prompt_tokens": 0, "preemptions": 0}

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, req: Request, keep_blocks: bool = False) -> None:
        """Drops a finished or aborted request and frees its blocks (unless keep_blocks)."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        if not keep_blocks:
            self._free(req)

    def schedule(self) -> list[Scheduled]:
        budget = self.max_batch_tokens
        batch: list[Scheduled] = []
        drafts = self._drafts()
        for req in list(self.running):
            if budget == 0:
                break
            if req not in self.running:  # preempted for an earlier request this step
                continue
            start = req.blocks.num_cached
            end = min(len(req.tokens), start + budget)
            draft = drafts.get(req, []) if end == len(req.tokens) else []
            del draft[max(0, budget - 1):]  # what the token budget leaves
            end += len(draft)
            if req.context_shift:
                end = fit_chunk(self.blocks, req, start, end)
                del draft[max(0, end - len(req.tokens)):]
            while not self.blocks.can_grow(req.blocks, end):
                if shift_for_memory(self.blocks, req):
                    continue
                victim = self.running[-1]
                self._preempt(victim)
                if victim is req:
                    break
            else:
                self.blocks.grow(req.blocks, end)
                batch.append(Scheduled(req, start, end, draft))
                budget -= end - start
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            continued = req.blocks is not None  # a continuation brings the blocks of the request it continues
            if not continued:
                req.blocks = self.blocks.match_prefix(req.tokens)
            start = req.blocks.num_cached
            end = min(len(req.tokens), start + budget)
            if req.context_shift:
                end = fit_chunk(self.blocks, req, start, end)
            while not self.blocks.can_grow(req.blocks, end) and shift_for_memory(self.blocks, req):
                pass
            if not self.blocks.can_grow(req.blocks, end):
                if not continued:
                    self._free(req)
                if not batch and not self.running:  # add_request checked that the request fits alone
                    raise CacheExhaustedError("the KV cache cannot hold this request next to the cached "
                                              "conversations it keeps; release them")
                break
            self.blocks.grow(req.blocks, end)
            self.waiting.popleft()
            if not continued:
                self.stats["cached_prompt_tokens"] += start
            self.running.append(req)
            batch.append(Scheduled(req, start, end))
            budget -= end - start
        return batch

    def _drafts(self) -> dict[Request, list[int]]:
        """Speculative tokens to verify after the last one, for the running requests that are
        decoding; drafters of one kind draft together (an assistant model runs them as a batch)."""
        groups: dict[type, list] = {}
        for req in self.running:
            if req.drafter is None or req.blocks.num_cached != len(req.tokens) - 1:
                continue
            room = min(self.max_batch_tokens - 1, req.max_new_tokens - len(req.output) - 1)
            if req.context_shift:  # drafts never cause a shift: tokens see the context plain decoding gives them
                room = min(room, req.window - req.blocks.kv_len(len(req.tokens)))
            groups.setdefault(type(req.drafter), []).append((req, room))
        out: dict[Request, list[int]] = {}
        for kind, jobs in groups.items():
            for (req, _), draft in zip(jobs, kind.draft_many([(r.drafter, r.tokens, room) for r, room in jobs])):
                out[req] = draft
        return out

    def _free(self, req: Request) -> None:
        if req.blocks is not None:
            self.blocks.release(req.blocks)
            req.blocks = None

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self._free(req)
        req.num_preemptions += 1
        self.stats["preemptions"] += 1
        self.waiting.appendleft(req)
