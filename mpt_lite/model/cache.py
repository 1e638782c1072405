"""The simple key/value cache returned as ``past_key_values``: per layer a (key, value) pair of
shape (batch, kv_heads, tokens, head_dim), the layout of transformers' legacy tuples.

It is never modified in place: a forward pass returns a new cache, so a caller may branch
several continuations from one prefix."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch


class MptCache:
    def __init__(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> None:
        self.layers = [(k, v) for k, v in layers]
        self.storage: object = None  # what the tensors view, when a native forward() wrote them (runtime)
        if self.layers:
            t = self.layers[0][0].shape[2]
            for i, (k, v) in enumerate(self.layers):
                if k.dim() != 4 or k.shape != v.shape or k.shape[2] != t:
                    raise ValueError(
                        f"past_key_values layer {i}: expected key and value of one shape "
                        f"(batch, kv_heads, {t}, head_dim), got {tuple(k.shape)} and {tuple(v.shape)}"
                    )

    @classmethod
    def coerce(cls, past: object) -> "MptCache | None":
        if past is None or isinstance(past, MptCache):
            return past
        if isinstance(past, (list, tuple)):
            try:
                return cls([(layer[0], layer[1]) for layer in past])
            except (TypeError, IndexError):
                pass
        raise TypeError(
            "past_key_values must be the cache a previous call returned, or per layer a (key, value) "
            f"tuple of tensors (batch, kv_heads, tokens, head_dim); got {type(past).__name__}"
        )

    def get_seq_length(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.layers)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers[i]

    def to_legacy_cache(self) -> tuple:
        return tuple(self.layers)
