"""Incremental detokenisation of one request: the text of each new token as soon as it is safe to
send (a multi-byte character is complete, the text cannot still become a stop string), ending
before a stop string. The same rules as generation._text_pieces, one token at a time."""
from __future__ import annotations

from typing import Any

from ..generation import _find_stop, _held_back


class TextDecoder:
    def __init__(self, tokenizer: Any, eos: set[int], stops: list[str]) -> None:
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
        cut = _find_stop(self.text, self.stops)
        if cut is not None:
            self.stopped = True
            return self._emit(cut)
        return self._emit(len(self.text) - _held_back(self.text, self.stops))

    def flush(self) -> str:
        """What is left once the request has ended (held-back text that never became a stop)."""
        cut = _find_stop(self.text, self.stops)
        return self._emit(len(self.text) if cut is None else cut)

    def _emit(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        piece = self.text[self.emitted:end]
        self.emitted = end
        return piece
