"""Which sequences run in the next step, and how many of their tokens: running sequences first
(one token each while decoding, a chunk of the prompt while prefilling), then waiting ones while
the token budget, the sequence limit and the KV cache allow. When the cache runs out, the most
recently admitted sequence is preempted: its blocks are freed and it is recomputed from its
tokens later (greedy output is unchanged)."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .block_manager import BlockManager, CacheExhaustedError
from .request import Request


@dataclass
class Scheduled:
    """One sequence's part of a step: it computes tokens [start, end) of req.tokens."""

    req: Request
    start: int
    end: int

    @property
    def samples(self) -> bool:  # its last token's logits are needed (the prompt is done)
        return self.end == len(self.req.tokens)


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

    def finish(self, req: Request) -> None:
        """Drops a finished or aborted request and frees its blocks."""
        if req in self.running:
            self.running.remove(req)
            self._free(req)
        elif req in self.waiting:
            self.waiting.remove(req)

    def schedule(self) -> list[Scheduled]:
        budget = self.max_batch_tokens
        batch: list[Scheduled] = []
        for req in list(self.running):
            if budget == 0:
                break
            if req not in self.running:  # preempted for an earlier request this step
                continue
            start = req.blocks.num_cached
            end = min(len(req.tokens), start + budget)
            while not self.blocks.can_grow(req.blocks, end):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is req:
                    break
            else:
                self.blocks.grow(req.blocks, end)
                batch.append(Scheduled(req, start, end))
                budget -= end - start
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            seq = self.blocks.match_prefix(req.tokens)
            start = seq.num_cached
            end = min(len(req.tokens), start + budget)
            if not self.blocks.can_grow(seq, end):
                self.blocks.release(seq)
                if not batch and not self.running:  # cannot happen: add_request checked the request fits alone
                    raise CacheExhaustedError("internal error: a request does not fit an empty KV cache")
                break
            self.blocks.grow(seq, end)
            self.waiting.popleft()
            req.blocks = seq
            self.stats["cached_prompt_tokens"] += start
            self.running.append(req)
            batch.append(Scheduled(req, start, end))
            budget -= end - start
        return batch

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
