"""Checks of text that comes from outside (a request, a caller) before a tokenizer reads it."""
from __future__ import annotations

from typing import Any


def check_text(text: Any, name: str = "the text") -> str:
    """text itself, or a TypeError (not a string) / ValueError (not valid Unicode: a lone surrogate
    such as JSON's "\\ud800", which no UTF-8 tokenizer can read) naming it."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode: a lone surrogate {text[e.start]!r} at index {e.start}") from None
    return text
