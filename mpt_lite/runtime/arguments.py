"""Checks of generate()'s arguments, run before any work (no tokenizing, no cache sized): each
bad value is a TypeError or ValueError that names the argument."""
from __future__ import annotations

import operator
from typing import Any

from ..text.checks import check_text


def check_max_new_tokens(value: Any, max_seq_len: int | None) -> int:
    """A non-negative int no larger than max_seq_len (None: no upper bound, for callers that go
    past max_seq_len on purpose); the exact check with the prompt's length comes once it is
    tokenized, but a cache is never sized for more than this."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_new_tokens must be an integer, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {value}")
    if max_seq_len is not None and value > max_seq_len:
        raise ValueError(f"max_new_tokens={value} exceeds max_seq_len={max_seq_len}; "
                         "lower max_new_tokens or load with a larger max_seq_len (from_pretrained(..., max_seq_len=N))")
    return value


def check_flag(name: str, value: Any) -> bool:
    """A True/False option (stream, context_shift): any other value is a TypeError, not read as truthy."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_n_keep(value: Any) -> int:
    """n_keep: a non-negative int (checked with or without context_shift; the room it leaves is checked
    where the window is known)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"n_keep must be a non-negative integer, got {value!r}")
    return value


def check_stops(stop: Any) -> list[str]:
    """stop as a list: None, a non-empty string, or a list/tuple of them."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, (list, tuple)):
        stops = list(stop)
    else:
        raise TypeError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
    for i, s in enumerate(stops):
        if not isinstance(s, str):
            raise TypeError(f"stop[{i}] must be a string, got {type(s).__name__}")
        if not s:
            raise ValueError("stop strings must not be empty")
    return stops


def check_prompts(inputs: Any) -> None:
    """A string prompt (or each of a list) must be valid Unicode for the tokenizer to read it."""
    if isinstance(inputs, str):
        check_text(inputs, "the prompt")
    elif isinstance(inputs, (list, tuple)):
        for i, p in enumerate(inputs):
            if isinstance(p, str):
                check_text(p, f"prompts[{i}]")


def check_eos_token_id(value: Any, vocab_size: int) -> Any:
    """eos_token_id as given to generate(): None (the model's), a token id or a list/tuple/set of
    them. Each is an integer below vocab_size (an id the model can never produce is a mistake, not a
    stop); a negative id stands for none (eos_token_id=-1: run to max_new_tokens) and is dropped,
    so it never fills finished rows. Returns a list of plain ints (a set's sorted), or None."""
    if value is None:
        return None
    many = isinstance(value, (list, tuple, set, frozenset))
    items = sorted(value, key=_token_id) if isinstance(value, (set, frozenset)) else list(value) if many else [value]
    ids = []
    for i, item in enumerate(items):
        name = f"eos_token_id[{i}]" if many else "eos_token_id"
        token = _token_id(item, name)
        if token >= vocab_size:
            raise ValueError(f"{name}={token} is out of range for a vocabulary of {vocab_size}")
        if token >= 0:
            ids.append(token)
    return ids


def _token_id(value: Any, name: str = "eos_token_id") -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer token id, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer token id (or a list of them), got {type(value).__name__} "
                        f"{value!r}") from None
