"""A conversation that keeps its KV cache between turns (what `mpt-lite chat` runs): each turn
computes only what was added since the previous one (the reply's end, the new message and the
template around them), and with context_shift=True it goes on past max_seq_len, dropping the
oldest KV blocks after the first n_keep tokens (by default: the system message).

    session = ChatSession(model, system="You are terse.", context_shift=True, max_new_tokens=64)
    print(session.send("Name three prime numbers."))
    for piece in session.send("And three more?", stream=True): print(piece, end="")
"""
from __future__ import annotations

from typing import Any, Iterator

from ..text.chat_encode import encode_chat, marked_prompt
from ..text.chat_template import stop_settings
from ..text.detok import TextStream
from .block_manager import DEFAULT_BLOCK_SIZE
from .context_shift import check_context_shift
from .engine import Engine, Request
from .generation import stop_checker
from .sampler import SamplingParams

_SAMPLING = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "seed")


class ChatSession:
    def __init__(self, model: Any, system: str | None = None, *, context_shift: bool = False,
                 n_keep: int | None = None, prompt_lookup_num_tokens: int | None = None,
                 chat_template: str | None = None, max_new_tokens: int = 256, **sampling: Any) -> None:
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise ValueError("this model has no tokenizer (no tokenizer.json in its checkpoint): chat needs one")
        unknown = set(sampling) - set(_SAMPLING)
        if unknown:
            raise TypeError(f"ChatSession got unexpected arguments: {', '.join(sorted(unknown))}")
        self.model, self.tok, self.chat_template = model, tok, chat_template
        self.params = SamplingParams(**sampling)
        self.max_new_tokens = max_new_tokens
        self.start = [{"role": "system", "content": system}] if system else []
        if n_keep is None:  # keep the system message through every shift
            n_keep = len(encode_chat(tok, self.start, False, chat_template)) if self.start else 0
        self.options = {"context_shift": bool(context_shift), "n_keep": n_keep,
                        "prompt_lookup_num_tokens": prompt_lookup_num_tokens}
        self.eos, self.stops = stop_settings(tok)
        blocks = -(-model.config.max_seq_len // DEFAULT_BLOCK_SIZE)
        if context_shift:  # now rather than at the first turn
            check_context_shift(model.config, n_keep, model.config.max_seq_len, DEFAULT_BLOCK_SIZE)
        self.engine = Engine(model, num_blocks=blocks, max_num_seqs=1)
        self.last_reply_tokens = 0  # tokens the model generated for the last reply (its eos included)
        self.reset()

    def reset(self) -> None:
        """Forgets the conversation (the system message stays)."""
        if getattr(self, "_req", None) is not None:
            self.engine.release(self._req)
        self.messages: list[dict] = list(self.start)
        self._req: Request | None = None
        self._covered = ""  # the prompt text whose tokens _req holds

    def send(self, content: str, stream: bool = False) -> str | Iterator[str]:
        """The assistant's reply to a new user message (text pieces with stream=True); the reply
        joins the conversation once it is complete."""
        messages = self.messages + [{"role": "user", "content": content}]
        # special-token text inside a message stays text (placeholders in `text`, see chat_encode)
        text, encode = marked_prompt(self.tok, messages, True, self.chat_template)
        req = self._add(text, encode)
        self.messages = messages
        pieces = self._reply(req, text)
        return pieces if stream else "".join(pieces)

    def _add(self, text: str, encode) -> Request:
        prev = self._req
        if prev is not None and text.startswith(self._covered):
            ids = prev.tokens + encode(text[len(self._covered):])
        else:  # the conversation changed under the cache: start again (shared prefix blocks still help)
            if prev is not None:
                self.engine.release(prev)
            self._req = prev = None
            ids = encode(text)
        req = self.engine.add_request(ids, self.max_new_tokens, params=self.params, eos_token_id=self.eos,
                                      stop_fn=stop_checker(self.tok, self.stops), keep_cache=True,
                                      continue_from=prev, **self.options)
        self._req = None
        return req

    def _reply(self, req: Request, text: str) -> Iterator[str]:
        reply: list[str] = []
        pieces = TextStream(self.tok, self.engine.stream(req), set(self.eos), self.stops)
        try:
            for piece in pieces:
                reply.append(piece)
                yield piece
        finally:
            self.last_reply_tokens = pieces.tokens
            if not req.finished:  # the caller stopped reading: this turn's cache is not worth keeping
                self.engine.abort(req)
            self.messages.append({"role": "assistant", "content": "".join(reply)})
            if req.blocks is not None:
                self._req = req
                self._covered = text + self.tok.decode(req.output, skip_special_tokens=False)
