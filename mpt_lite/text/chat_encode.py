"""A conversation's prompt as token ids where only the chat template's own markers are special
tokens: ``<|im_end|>`` written inside a message is text, so a message cannot end its turn and
open a system turn of its own (chat-template injection).

Special-token text in the messages is swapped for placeholders before rendering; the rendered
prompt is then cut at the special tokens left in it (the template's), which become their ids,
and every run of text between them, placeholders put back as the characters they stood for, is
encoded as plain text. A conversation without special-token text is encoded exactly as the
rendered prompt would be."""
from __future__ import annotations

import re
from typing import Any, Callable

from .chat_template import check_messages, check_roles, render_chat, template_for
from .checks import check_text

_PRIVATE_USE = range(0xE000, 0xF900)


def encode_chat(tokenizer: Any, messages: Any, add_generation_prompt: bool = True,
                chat_template: str | None = None, **extra: Any) -> list[int]:
    """The token ids of a conversation's prompt (no special tokens added beyond the template's)."""
    text, encode = marked_prompt(tokenizer, messages, add_generation_prompt, chat_template, **extra)
    return encode(text)


def marked_prompt(tokenizer: Any, messages: Any, add_generation_prompt: bool = True,
                  chat_template: str | None = None, **extra: Any) -> tuple[str, Callable[[str], list[int]]]:
    """The rendered prompt with special-token text inside the messages replaced by placeholders,
    and the encoder of that text or of any piece of it cut between template markers (what a chat
    that keeps its cache encodes each turn): the template's special tokens become their ids,
    placeholders the plain text they stand for."""
    messages = check_messages(messages)
    for i, m in enumerate(messages):
        check_text(m["content"], f"messages[{i}].content")
        check_text(m["role"], f"messages[{i}].role")
    specials = [t for t in tokenizer.all_special_tokens if tokenizer.token_to_id(t) is not None]
    template = template_for(tokenizer, chat_template)
    check_roles(messages, template)
    mark = _unused_char([template, *(v for m in messages for v in m.values() if isinstance(v, str))])
    literals: list[str] = []
    hide = _hider(specials, mark, literals)
    safe = [{k: hide(v) if isinstance(v, str) else v for k, v in m.items()} for m in messages]
    text = render_chat(tokenizer, safe, add_generation_prompt=add_generation_prompt, chat_template=template, **extra)
    if not literals:
        return text, lambda piece: tokenizer.encode(piece, add_special_tokens=False)
    return text, lambda piece: _encode_marked(tokenizer, piece, specials, mark, literals)


def _unused_char(texts: list[str]) -> str:
    """A private-use character that none of the texts holds (it frames the placeholders)."""
    used = set().union(*(set(t) for t in texts)) if texts else set()
    for cp in _PRIVATE_USE:
        if chr(cp) not in used:
            return chr(cp)
    raise ValueError("the conversation uses every private-use character: cannot frame its text safely")


def _hider(specials: list[str], mark: str, literals: list[str]):
    if not specials:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)))

    def placeholder(match: re.Match) -> str:
        literals.append(match.group(0))
        return f"{mark}{len(literals) - 1}{mark}"

    return lambda text: pattern.sub(placeholder, text)


def _encode_marked(tokenizer: Any, text: str, specials: list[str], mark: str, literals: list[str]) -> list[int]:
    tokens = "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))
    pattern = re.compile(f"({tokens})|{re.escape(mark)}(\\d+){re.escape(mark)}")
    ids: list[int] = []
    pending: list[str] = []  # plain text since the last template marker

    def flush() -> None:
        if pending:
            ids.extend(tokenizer.encode_text("".join(pending), add_special_tokens=False))
            pending.clear()

    pos = 0
    for m in pattern.finditer(text):
        pending.append(text[pos:m.start()])
        if m.group(1) is not None:  # a special token the template wrote
            flush()
            ids.append(tokenizer.token_to_id(m.group(1)))
        else:
            pending.append(literals[int(m.group(2))])
        pos = m.end()
    pending.append(text[pos:])
    flush()
    return ids
