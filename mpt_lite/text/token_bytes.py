"""The bytes of one token, as OpenAI's logprobs report them (`bytes`): a byte-level BPE token may
hold part of a UTF-8 character, so decoding it alone would lose those bytes."""
from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable character table (the one `tokenizers`' ByteLevel uses), inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The bytes token_id stands for: its byte-level characters mapped back to bytes; special and
    added tokens (and tokenizers that are not byte-level) give their decoded text as UTF-8."""
    piece = tokenizer.id_to_token(token_id)
    if piece is None:
        return b""
    table = _byte_decoder()
    if piece in tokenizer.all_special_tokens or any(c not in table for c in piece):
        return tokenizer.decode([token_id], skip_special_tokens=False).encode("utf-8")
    return bytes(table[c] for c in piece)


def token_text(tokenizer: Any, token_id: int) -> str:
    return token_bytes(tokenizer, token_id).decode("utf-8", errors="replace")
