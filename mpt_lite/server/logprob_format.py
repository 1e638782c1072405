"""OpenAI's two logprobs shapes from the engine's TokenLogprob records: chat's
{"content": [{"token", "logprob", "bytes", "top_logprobs"}]} and the legacy completions'
{"tokens", "token_logprobs", "top_logprobs", "text_offset"}."""
from __future__ import annotations

from typing import Any, Sequence

from ..text.token_bytes import token_bytes


class LogprobFormat:
    """One choice's logprobs, piece by piece (completions' text_offset runs on across pieces)."""

    def __init__(self, tokenizer: Any, chat: bool, offset: int = 0) -> None:
        self.tok, self.chat, self.offset = tokenizer, chat, offset

    def _token(self, token: int) -> tuple[str, bytes]:
        raw = token_bytes(self.tok, token)
        return raw.decode("utf-8", errors="replace"), raw

    def render(self, entries: Sequence[Any]) -> dict[str, Any]:
        if self.chat:
            return {"content": [self._chat_entry(e) for e in entries], "refusal": None}
        tokens, offsets = [], []
        for e in entries:
            text, _ = self._token(e.token)
            tokens.append(text)
            offsets.append(self.offset)
            self.offset += len(text)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{self._token(t)[0]: lp for t, lp in e.top} for e in entries],
                "text_offset": offsets}

    def _chat_entry(self, e: Any) -> dict[str, Any]:
        text, raw = self._token(e.token)
        top = []
        for t, lp in e.top:
            t_text, t_raw = self._token(t)
            top.append({"token": t_text, "logprob": lp, "bytes": list(t_raw)})
        return {"token": text, "logprob": e.logprob, "bytes": list(raw), "top_logprobs": top}

    @staticmethod
    def merge(parts: Sequence[dict[str, Any]], chat: bool) -> dict[str, Any]:
        """The pieces of a whole (non-streamed) choice joined into one logprobs object."""
        if chat:
            return {"content": [c for p in parts for c in p["content"]], "refusal": None}
        keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
        return {k: [x for p in parts for x in p[k]] for k in keys}
