"""model.chat(): a conversation rendered with the checkpoint's chat template, answered by generate.
Message text is text: a `<|im_end|>` typed inside a message is not the end-of-turn token (only the
template's own markers are special), as in the server."""
from __future__ import annotations

from typing import Any, Iterator

from ..text.chat_encode import encode_chat
from ..text.chat_template import stop_settings
from .arguments import check_stops
from .generation import PromptIds


def chat(model: Any, messages: Any, stream: bool = False, chat_template: str | None = None,
         **gen_kwargs: Any) -> str | Iterator[str]:
    """The assistant's reply to a conversation (a string, or text pieces with stream=True)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("this model has no tokenizer (no tokenizer.json in its checkpoint): chat needs one")
    prompt = PromptIds(encode_chat(tok, messages, add_generation_prompt=True, chat_template=chat_template))
    eos_ids, stops = stop_settings(tok)
    if gen_kwargs.get("eos_token_id") is not None:
        extra = gen_kwargs.pop("eos_token_id")
        eos_ids += list(extra) if isinstance(extra, (list, tuple, set)) else [extra]
    stops += check_stops(gen_kwargs.pop("stop", None))
    return model.generate(prompt, stream=stream, eos_token_id=eos_ids, stop=stops, **gen_kwargs)
