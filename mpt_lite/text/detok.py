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


class StopMatcher:
    """Watches a growing text for stop strings, one character at a time: a KMP automaton per stop
    string, so each new character costs O(1) amortized per stop, whatever the stops' lengths
    (re-searching the text's tail for every token costs O(len(stop)^2))."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.fail = [_failure(s) for s in self.stops]
        self.state = [0] * len(self.stops)  # per stop: its longest prefix that ends the text so far
        self.length = 0  # characters seen

    def feed(self, text: str) -> int | None:
        """Reads the next characters; where the earliest stop string completed in them starts
        (an index into the whole text), or None."""
        best = None
        for k, stop in enumerate(self.stops):
            q, fail, n = self.state[k], self.fail[k], len(stop)
            for j, ch in enumerate(text):
                while q and stop[q] != ch:
                    q = fail[q - 1]
                if stop[q] == ch:
                    q += 1
                if q == n:
                    start = self.length + j + 1 - n
                    best = start if best is None else min(best, start)
                    q = fail[q - 1]
                    break
            self.state[k] = q
        self.length += len(text)
        return best

    def held_back(self) -> int:
        """How many trailing characters could still be the start of a stop string."""
        return max(self.state, default=0)


def _failure(s: str) -> list[int]:
    """KMP's failure table: for each prefix of s, its longest proper prefix that is also its suffix."""
    fail = [0] * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k - 1]
        if s[i] == s[k]:
            k += 1
        fail[i] = k
    return fail


class TextDecoder:
    """One request's tokens in, safe text pieces out. Decodes only a window of the last few tokens
    per step (as text-generation-inference does), so the cost per token does not grow with the
    length of the answer."""

    def __init__(self, tokenizer: Any, eos: set[int] | frozenset[int], stops: list[str]) -> None:
        self.tok, self.eos, self.stops = tokenizer, eos, stops
        self.ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] is the window of already decoded tokens before new ones
        self._read = 0
        self._matcher = StopMatcher(stops)
        self._pending = ""  # decoded text not yet sent
        self._sent = 0  # characters sent
        self._cut: int | None = None  # where a stop string starts
        self.stopped = False  # a stop string was found: the request should end now

    def feed(self, token: int) -> str:
        """The new text that `token` makes safe to send ('' while it is held back)."""
        if self.stopped or token in self.eos:
            return ""
        self.ids.append(token)
        new = self._decode_new(final=False)
        if new is None:  # an unfinished multi-byte character: wait for its next byte
            return ""
        self._add(new)
        if self._cut is not None:
            self.stopped = True
            return self._emit(self._cut)
        return self._emit(self._sent + len(self._pending) - self._matcher.held_back())

    def flush(self) -> str:
        """What is left once the request has ended (held-back text that never became a stop)."""
        if not self.stopped and self._read < len(self.ids):
            self._add(self._decode_new(final=True) or "")
        return self._emit(self._sent + len(self._pending) if self._cut is None else self._cut)

    def _decode_new(self, final: bool) -> str | None:
        before = self.tok.decode(self.ids[self._prefix:self._read])
        now = self.tok.decode(self.ids[self._prefix:])
        if len(now) <= len(before) or (now.endswith("\ufffd") and not final):
            return "" if final else None
        self._prefix, self._read = self._read, len(self.ids)
        return now[len(before):]

    def _add(self, text: str) -> None:
        if self._cut is None and text:
            self._pending += text
            self._cut = self._matcher.feed(text)

    def _emit(self, end: int) -> str:
        """Sends the text up to absolute position `end`."""
        n = end - self._sent
        if n <= 0:
            return ""
        piece, self._pending = self._pending[:n], self._pending[n:]
        self._sent = end
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


class TextStream:
    """text_pieces as an iterator that also counts the tokens it has read (`tokens`: what the model generated for
    the text so far, the eos included), so that a caller can report tokens per second without re-encoding."""

    def __init__(self, tokenizer: Any, tokens: Iterable[int], eos: set[int] | frozenset[int], stops: list[str]):
        self.tokens = 0
        self._pieces = text_pieces(tokenizer, self._count(tokens), eos, stops)

    def _count(self, tokens: Iterable[int]) -> Iterator[int]:
        for t in tokens:
            self.tokens += 1
            yield t

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        return next(self._pieces)


def final_text(tokenizer: Any, tokens: Iterable[int], eos: set[int] | frozenset[int], stops: list[str]) -> str:
    """The whole completion of a finished request, as text_pieces would have streamed it."""
    return "".join(text_pieces(tokenizer, tokens, eos, stops))
