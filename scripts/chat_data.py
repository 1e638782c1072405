"""Chat conversations as training rows: rendered with the model's chat template, tokenized, labelled
on the assistant turns only (their closing <|im_end|> included, so the model learns to stop), and
packed into rows of a fixed length."""
from __future__ import annotations

import random
from typing import Iterable, Iterator

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
              follow_up_fraction: float, unnamed_fraction: float = 0.2, rename_fraction: float = 0.0,
              name_style: str = "snake") -> Iterator[Row]:
    """Endless packed rows: each epoch a new shuffle, new phrasings of every function's request and
    new fresh names for rename_fraction of them (chat_pairs.NamePool, from these functions' names);
    whole conversations only (one longer than seq_len is skipped), the rest of a row padded."""
    rng = random.Random(seed)
    pool = NamePool.of(functions, name_style)
    while True:
        order = list(functions)
        rng.shuffle(order)
        yield from packed((labelled_tokens(tok, bpe, conversation(fn, rng, follow_up_fraction, unnamed_fraction,
                                                                   pool, rename_fraction)) for fn in order),
                          seq_len, pad_id)


def packed(items: Iterable[Row], seq_len: int, pad_id: int, keep_tail: bool = True) -> Iterator[Row]:
    """Whole items packed into padded rows of seq_len, in order (one longer than seq_len is
    skipped); keep_tail: also the last, partly filled row."""
    ids: list[int] = []
    labels: list[int] = []
    heads: list[bool] = []
    for x, y, h in items:
        if len(x) > seq_len:
            continue
        if len(ids) + len(x) > seq_len:
            yield pad(ids, labels, heads, seq_len, pad_id)
            ids, labels, heads = [], [], []
        ids += x
        labels += y
        heads += h
    if ids and keep_tail:
        yield pad(ids, labels, heads, seq_len, pad_id)


def pad(ids: list[int], labels: list[int], heads: list[bool], seq_len: int, pad_id: int) -> Row:
    n = seq_len - len(ids)
    return ids + [pad_id] * n, labels + [IGNORE] * n, heads + [False] * n


PARAMS = ["()", "(self)", "(self, value)", "(data)", "(self, *args)", "(name, default=None)"]


def name_list(rng: random.Random, names: list[str], style: str) -> str:
    """The line that lists the names of a copy row. A NamePool style "snake": a comment,
    `# Functions: a, b`. "varied": also in backticks or quotes, where a name's first piece is a
    token without the leading space that it has after `def ` (a request's `keys` answered with
    `defkeys(`)."""
    head = "# " + rng.choice(["Functions", "Defines", "Names", "API"]) + ": "
    form = "plain" if style == "snake" else rng.choice(("plain", "backticks", "quotes"))
    if form == "backticks":
        return head + ", ".join(f"`{n}`" for n in names) + "\n\n"
    if form == "quotes":
        return "__all__ = [" + ", ".join(f"'{n}'" for n in names) + "]\n\n"
    return head + ", ".join(names) + "\n\n"


def copy_rows(bpe, pool: NamePool, seq_len: int, pad_id: int, seed: int) -> Iterator[Row]:
    """Endless rows that only copying can predict: a line listing 2-6 fresh names (chat_pairs.NamePool;
    name_list in the pool's style), then a `def` of each, in another order; the loss is on the names
    in the `def` lines only.

    Copying the requested name into `def name(` is an induction-head behaviour (after ` read` and
    `_` comes `cs`, as it did earlier in the request); a base model trained on 1.6 M tokens has not
    formed one (the chat runs copied a name's first piece and guessed the rest: `read_d_rows` for
    read_csv_rows), and dense copy targets grow one quickly. The copies are `def` lines, as in a
    chat answer, not the line before repeated (a first version said a line of names twice), and
    nothing but the names is labelled, so the stub bodies are not learnt."""
    rng = random.Random(seed)
    while True:
        ids: list[int] = []
        labels: list[int] = []
        while True:
            names = [pool.fresh(rng, "") for _ in range(rng.randint(2, 6))]
            a = bpe.encode(name_list(rng, names, pool.style), add_special_tokens=False).ids
            b, y = [], []
            for name in rng.sample(names, len(names)):
                enc = bpe.encode(f"def {name}{rng.choice(PARAMS)}:\n    pass\n\n", add_special_tokens=False)
                b += enc.ids
                y += [t if 3 <= s < 4 + len(name) else IGNORE for t, (s, _) in zip(enc.ids, enc.offsets)]
            if len(ids) + len(a) + len(b) > seq_len:
                break
            ids += a + b
            labels += [IGNORE] * len(a) + y
        yield pad(ids, labels, [False] * len(ids), seq_len, pad_id)


def function_rows(bpe, functions: list[Function], seq_len: int, pad_id: int, seed: int) -> Iterator[Row]:
    """Endless rows of plain code (no chat markup, every token labelled): the functions as the chat
    answers write them (one-line docstring), one after another, each epoch in a new order. Plain
    generation from a `def` line (`mpt-lite generate "def fibonacci(n):"`) then learns the same
    short shape as the chat answers instead of looping in a long docstring."""
    rng = random.Random(seed)
    while True:
        order = list(functions)
        rng.shuffle(order)
        encoded = (bpe.encode(fn.source + "\n\n\n", add_special_tokens=False).ids for fn in order)
        # each epoch's last, partly filled row is left out (as in the shipped run)
        yield from packed(((x, x, [False] * len(x)) for x in encoded), seq_len, pad_id, keep_tail=False)
