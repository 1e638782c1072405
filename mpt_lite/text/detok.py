"""Incremental detokenization with stop strings: the text of each new token as soon as it is safe
to send (a multi-byte character is complete, the text cannot still become a stop string), ending
before a stop string. One implementation, used by generate() and by the server."""
from __future__ import annotations

from typing import Any, Iterable, Iterator


def find_stop(text: str, stops: list[str]) -> int | None:
    """Where the earliest stop string starts in text, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could still turn out to be the start of a stop string."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return keep


class TextDecoder:
    """One request's tokens in, safe text pieces out."""

    def __init__(self, tokenizer: Any, eos: set[int] | frozenset[int], stops: list[str]) -> None:
        self.tok, self.eos, self.stops = tokenizer, eos, stops
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False  # a stop string was found: the request should end now

    def feed(self, token: int) -> str:
        """The new text that `token` makes safe to send ('' while it is held back)."""
        if self.stopped or token in self.eos:
            return ""
        self.ids.append(token)
        self.text = self.tok.decode(self.ids)
        if self.text.endswith("\ufffd"):  # an unfinished multi-byte character: wait for its next byte
            return ""
        cut = find_stop(self.text, self.stops)
        if cut is not None:
            self.stopped = True
            return self._emit(cut)
        return self._emit(len(self.text) - held_back(self.text, self.stops))

    def flush(self) -> str:
        """What is left once the request has ended (held-back text that never became a stop)."""
        cut = find_stop(self.text, self.stops)
        return self._emit(len(self.text) if cut is None else cut)

    def _emit(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        piece = self.text[self.emitted:end]
        self.emitted = end
        return piece


def text_pieces(tokenizer: Any, tokens: Iterable[int], eos: set[int] | frozenset[int],
                stops: list[str]) -> Iterator[str]:
    """The text pieces of a token stream, ending before a stop string or at eos."""
    dec = TextDecoder(tokenizer, eos, stops)
    for t in tokens:
        if t in eos:
            break
        piece = dec.feed(t)
        if piece:
            yield piece
        if dec.stopped:
            break
    piece = dec.flush()
    if piece:
        yield piece


def final_text(tokenizer: Any, tokens: Iterable[int], eos: set[int] | frozenset[int], stops: list[str]) -> str:
    """The whole completion of a finished request, as text_pieces would have streamed it."""
    return "".join(text_pieces(tokenizer, tokens, eos, stops))
