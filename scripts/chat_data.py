"""Chat conversations as training rows: rendered with the model's chat template, tokenized, labelled
on the assistant turns only (their closing <|im_end|> included, so the model learns to stop), and
packed into rows of a fixed length."""
from __future__ import annotations

import random
from typing import Iterator

from chat_pairs import Function, NamePool, conversation
from mpt_lite.text.chat_template import IM_END, render_chat

IGNORE = -100


def labelled_tokens(tok, bpe, messages: list[dict]) -> tuple[list[int], list[int], list[bool]]:
    """(ids, labels, heads) of a whole conversation; labels are IGNORE outside the assistant turns;
    heads marks the tokens of each assistant turn's first line (`def name(...):`, where the
    requested name is copied), which the fine-tune can weigh more.

    tok: the model's MptTokenizer (its chat template); bpe: the same tokenizer.json as a
    `tokenizers.Tokenizer` (for the offsets). Each assistant span is found by rendering the conversation up to that turn
    with the generation prompt (the text the model is given) and then with the reply."""
    text = render_chat(tok, messages, add_generation_prompt=False)
    spans, heads = [], []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render_chat(tok, messages[:i], add_generation_prompt=True) if i else ""
        reply = prompt + m["content"] + IM_END
        if not text.startswith(reply):
            raise ValueError("the chat template does not render an assistant turn as prompt + reply + <|im_end|>")
        spans.append((len(prompt), len(reply)))
        heads.append((len(prompt), len(prompt) + (m["content"] + "\n").index("\n")))
    enc = bpe.encode(text, add_special_tokens=False)
    labels = [t if any(a <= s and e <= b for a, b in spans) else IGNORE
              for t, (s, e) in zip(enc.ids, enc.offsets)]
    head = [any(a <= s < b for a, b in heads) for s, _ in enc.offsets]
    return list(enc.ids), labels, head


Row = tuple[list[int], list[int], list[bool]]  # ids, labels, heads (see labelled_tokens)


def chat_rows(tok, bpe, functions: list[Function], seq_len: int, pad_id: int, seed: int,
              follow_up_fraction: float, unnamed_fraction: float = 0.2, rename_fraction: float = 0.0) -> Iterator[Row]:
    """Endless packed rows: each epoch a new shuffle, new phrasings of every function's request and
    new fresh names for rename_fraction of them (chat_pairs.NamePool, from these functions' names);
    whole conversations only (one longer than seq_len is skipped), the rest of a row padded."""
    rng = random.Random(seed)
    pool = NamePool.of(functions)
    while True:
        order = list(functions)
        rng.shuffle(order)
        ids: list[int] = []
        labels: list[int] = []
        heads: list[bool] = []
        for fn in order:
            x, y, h = labelled_tokens(tok, bpe, conversation(fn, rng, follow_up_fraction, unnamed_fraction,
                                                                pool, rename_fraction))
            if len(x) > seq_len:
                continue
            if len(ids) + len(x) > seq_len:
                yield pad(ids, labels, heads, seq_len, pad_id)
                ids, labels, heads = [], [], []
            ids += x
            labels += y
            heads += h
        if ids:
            yield pad(ids, labels, heads, seq_len, pad_id)


def pad(ids: list[int], labels: list[int], heads: list[bool], seq_len: int, pad_id: int) -> Row:
    n = seq_len - len(ids)
    return ids + [pad_id] * n, labels + [IGNORE] * n, heads + [False] * n
