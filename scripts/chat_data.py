"""Chat conversations as training rows: rendered with the model's chat template, tokenized, labelled
on the assistant turns only (their closing <|im_end|> included, so the model learns to stop), and
packed into rows of a fixed length."""
from __future__ import annotations

import random
from typing import Iterator

from chat_pairs import Function, conversation
from mpt_lite.text.chat_template import IM_END, render_chat

IGNORE = -100


def labelled_tokens(tok, bpe, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, labels) of a whole conversation; labels are IGNORE outside the assistant turns.

    tok: the model's MptTokenizer (its chat template); bpe: the same tokenizer.json as a
    `tokenizers.Tokenizer` (for the offsets). Each assistant span is found by rendering the conversation up to that turn
    with the generation prompt (the text the model is given) and then with the reply."""
    text = render_chat(tok, messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render_chat(tok, messages[:i], add_generation_prompt=True) if i else ""
        reply = prompt + m["content"] + IM_END
        if not text.startswith(reply):
            raise ValueError("the chat template does not render an assistant turn as prompt + reply + <|im_end|>")
        spans.append((len(prompt), len(reply)))
    enc = bpe.encode(text, add_special_tokens=False)
    labels = [t if any(a <= s and e <= b for a, b in spans) else IGNORE
              for t, (s, e) in zip(enc.ids, enc.offsets)]
    return list(enc.ids), labels


def chat_rows(tok, bpe, functions: list[Function], seq_len: int, pad_id: int, seed: int,
              follow_up_fraction: float) -> Iterator[tuple[list[int], list[int]]]:
    """Endless packed rows: each epoch a new shuffle and new phrasings of every function's request;
    whole conversations only (one longer than seq_len is skipped), the rest of a row padded."""
    rng = random.Random(seed)
    while True:
        order = list(functions)
        rng.shuffle(order)
        ids: list[int] = []
        labels: list[int] = []
        for fn in order:
            x, y = labelled_tokens(tok, bpe, conversation(fn, rng, follow_up_fraction))
            if len(x) > seq_len:
                continue
            if len(ids) + len(x) > seq_len:
                yield pad(ids, labels, seq_len, pad_id)
                ids, labels = [], []
            ids += x
            labels += y
        if ids:
            yield pad(ids, labels, seq_len, pad_id)


def pad(ids: list[int], labels: list[int], seq_len: int, pad_id: int) -> tuple[list[int], list[int]]:
    n = seq_len - len(ids)
    return ids + [pad_id] * n, labels + [IGNORE] * n
