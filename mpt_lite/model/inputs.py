"""Checks of what a caller passes to a model: token ids, attention masks, labels, stray arguments."""
from __future__ import annotations

from typing import Any

import torch


def check_input_ids(input_ids: Any, vocab_size: int) -> None:
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.LongTensor, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.long, torch.int32):  # what torch's embedding lookup takes
        raise TypeError(f"input_ids must hold integer token ids (torch.long or torch.int32), got {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, tokens), got {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids is empty: shape {tuple(input_ids.shape)}")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise IndexError(f"token id {bad} is out of range for a vocabulary of {vocab_size}")


def check_past(past: Any, batch: int, kv_heads: int, head_dim: int) -> None:
    """Every layer of past_key_values: float key and value tensors (batch, kv_heads, tokens, head_dim), one length."""
    tokens = None  # the first key's, which every tensor must share
    for i, layer in enumerate(past):
        for name, t in zip(("key", "value"), layer):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise TypeError(f"past_key_values[{i}] {name} must be a float tensor, got {got}")
            if tokens is None and t.dim() == 4:
                tokens = t.shape[2]
            if tuple(t.shape) != (batch, kv_heads, tokens, head_dim):
                raise ValueError(f"past_key_values[{i}] {name} has shape {tuple(t.shape)}; this model and input "
                                 f"need (batch, kv_heads, tokens, head_dim) = {(batch, kv_heads, tokens, head_dim)}")


def check_logits_to_keep(logits_to_keep: Any) -> None:
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, (int, torch.Tensor)):
        raise TypeError(f"logits_to_keep must be an int (the last N positions, 0: all) or a tensor of positions, "
                        f"got {type(logits_to_keep).__name__}")
    if isinstance(logits_to_keep, int) and logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")


def check_attention_mask(mask: Any, batch: int, total: int, device: torch.device) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a tensor, got {type(mask).__name__}")
    if mask.shape != (batch, total):
        raise ValueError(
            f"attention_mask must have shape (batch, past + new tokens) = ({batch}, {total}), "
            f"got {tuple(mask.shape)}"
        )
    mask = mask.to(device)
    if bool((mask != 0).all()):
        return None
    return mask


def reject_unused(unused: dict, who: str) -> None:
    given = [k for k, v in unused.items() if v is not None and v is not False and not (k == "logits_to_keep" and v == 0)]
    if given:
        raise TypeError(f"{who}.forward() got unexpected arguments: {', '.join(sorted(given))}")


def check_labels(labels: Any, shape: torch.Size, name: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(labels).__name__}")
    if labels.is_floating_point():
        raise TypeError(f"{name} must hold integer class ids, got {labels.dtype}")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(labels.shape)}")
    return labels.long()


def check_positions(positions: Any, batch: int, name: str, device: torch.device) -> torch.Tensor:
    """Question answering's start_positions / end_positions: integer token positions, one per row
    ((batch,) or (batch, 1), as transformers takes them)."""
    try:
        t = torch.as_tensor(positions, device=device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be a tensor of integer token positions, got {type(positions).__name__}") from e
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token positions, got {t.dtype}")
    if t.dim() > 1:
        t = t.squeeze(-1)
    if tuple(t.shape) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) or ({batch}, 1): one position per row, "
                         f"got {tuple(torch.as_tensor(positions).shape)}")
    return t.long()
