"""Checks of generate()'s arguments, run before any work (no tokenizing, no cache sized): each
bad value is a TypeError or ValueError that names the argument."""
from __future__ import annotations

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
