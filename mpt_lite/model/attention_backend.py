"""The interface through which the model attends over keys/values it does not hold itself (the
engine's paged KV cache). The model owns it; the runtime implements it (runtime/kv_cache.py), so
the model never imports the runtime."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class PagedAttention(ABC):
    """One layer's attention over a flat batch of new tokens of several sequences."""

    @abstractmethod
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
               slopes: torch.Tensor | None) -> torch.Tensor:
        """q (tokens, heads, head_dim), k/v (tokens, kv_heads, head_dim) of the new tokens: stores
        k/v, returns the attention output (tokens, heads, head_dim) in float32."""


class PagedBatch(ABC):
    """What one forward pass over a flat batch needs from its owner: the tokens' positions and,
    per layer, a PagedAttention."""

    positions: torch.Tensor  # (tokens,) int64: each new token's position in its sequence

    @abstractmethod
    def layer(self, index: int) -> PagedAttention:
        ...
