"""Prompt-lookup decoding's drafts: the tokens that followed an earlier occurrence of the
sequence's last n-gram (transformers' PromptLookupCandidateGenerator: the longest n-gram first,
its earliest occurrence). Verification and acceptance are in speculative.py."""
from __future__ import annotations

from array import array
from typing import Sequence

MAX_NGRAM = 3
MIN_NGRAM = 2  # a single-token match drafts mostly noise on free text, and a wasted draft costs a wider step


def propose(tokens: Sequence[int], num_tokens: int, max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM) -> list[int]:
    """Up to num_tokens tokens that followed the earliest earlier occurrence of the last n-gram of
    `tokens` (n from max_ngram down to min_ngram); [] when nothing matches."""
    n_tok = len(tokens)
    if num_tokens <= 0 or n_tok < min_ngram + 1:
        return []
    buf = array("i", tokens).tobytes()  # bytes.find searches in C; a match must sit on a 4-byte boundary
    for n in range(min(max_ngram, n_tok - 1), min_ngram - 1, -1):
        pattern = buf[4 * (n_tok - n):]
        limit = 4 * (n_tok - 1)  # the match must end before the last token (not be the n-gram itself)
        at = buf.find(pattern, 0, limit)
        while at != -1 and at % 4:
            at = buf.find(pattern, at + 1, limit)
        if at != -1:
            start = at // 4 + n
            return list(tokens[start:start + num_tokens])
    return []


class LookupState:
    """One request's drafting: up to `k` tokens, fewer after a partial acceptance (the next draft is
    one longer than what was accepted, growing back by two on a full acceptance, as transformers'
    assistant heuristic does), and after a draft rejected outright a pause of 1, 2, 4, ... up to
    MAX_PAUSE steps without drafting: a rejected draft costs a wider step, so where the text does
    not repeat itself drafting soon stops costing anything."""

    MAX_PAUSE = 16

    probs = None  # drafts proposed with certainty (see speculative.verify)

    def __init__(self, k: int) -> None:
        self.k, self.cap, self.pause, self.backoff = k, k, 0, 1

    @staticmethod
    def draft_many(jobs: Sequence[tuple["LookupState", Sequence[int], int]]) -> list[list[int]]:
        return [d.draft(tokens, room) for d, tokens, room in jobs]

    def draft(self, tokens: Sequence[int], room: int) -> list[int]:
        if self.pause:
            self.pause -= 1
            return []
        return propose(tokens, min(self.cap, room))

    def update(self, drafted: int, accepted: int) -> None:
        if accepted == 0:
            self.pause, self.backoff = self.backoff, min(2 * self.backoff, self.MAX_PAUSE)
        else:
            self.backoff = 1
        self.cap = min(self.k, self.cap + 2) if accepted == drafted else max(1, accepted + 1)

    def close(self) -> None:
        pass
