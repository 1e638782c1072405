"""One generation request as the engine tracks it: its tokens, its sampling settings, its share
of the KV cache and why it ended."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .block_manager import SeqBlocks
from .assistant import AssistantDrafter
from .prompt_lookup import LookupState
from .sampler import SamplingParams


@dataclass(eq=False)
class Request:
    id: int
    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams
    eos: frozenset[int]
    stop_fn: Callable[[list[int]], bool] | None = None
    output: list[int] = field(default_factory=list)  # generated tokens (an eos that ended it included)
    finish_reason: str | None = None  # "length", "eos", "stop" or "abort"
    blocks: SeqBlocks | None = None
    generator: torch.Generator | None = None
    num_preemptions: int = 0
    logprobs: list = field(default_factory=list)  # logprobs.TokenLogprob per output token, when params ask
    constraint: Any = None  # a constraints.Constraint: masks the logits, ends the request when complete
    context_shift: bool = False  # drop the oldest blocks after n_keep tokens instead of passing `window`
    n_keep: int = 0
    window: int = 0  # the most tokens the sequence may hold in the cache (max_seq_len, or the budget)
    drafter: LookupState | AssistantDrafter | None = None  # speculative drafts (None: off)
    keep_cache: bool = False  # keep the blocks when finished, for a continuation (Engine.add_request)
    drafted: int = 0  # speculative tokens proposed and accepted so far
    accepted: int = 0
    tokens: list[int] = field(init=False, repr=False)  # prompt + output, kept up to date by append()

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt) + list(self.output)

    def append(self, token: int) -> None:
        """Records a generated token and whether it ends the request."""
        self.output.append(token)
        self.tokens.append(token)
        if token in self.eos:
            self.finish_reason = "eos"
        elif self.constraint is not None and self.constraint.advance(token):
            self.finish_reason = "stop"
        elif len(self.output) >= self.max_new_tokens:
            self.finish_reason = "length"
        elif self.stop_fn is not None and self.stop_fn(self.output):
            self.finish_reason = "stop"

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
