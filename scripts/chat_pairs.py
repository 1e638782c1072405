"""Chat instruction pairs made from the standard library itself: for each function or method with a
docstring, a user request written from its name, signature and the docstring's first sentence, and
the function's source as the assistant's answer; some conversations go on for a second turn
("now add a docstring", "rename it to Y").

Shared by finetune_chat_model.py (training files) and eval_chat_model.py (held-out files)."""
from __future__ import annotations

import ast
import random
import re
import textwrap
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from default_model_corpus import read_text

# Requests that name the function (eval uses only these, so "defines the requested name" is fair).
NAMED_PHRASINGS = [
    "Write a function named {name} that does the following: {sentence}.",
    "Implement {name}({params}): {sentence}.",
    "Write a Python function `{name}`. {sentence}.",
    "{sentence}. Call the function {name}.",
]
# Training only (eval keeps the four above, so its numbers stay comparable between runs): more
# requests that put the name first, which is the word the answer starts with after `def `.
TRAIN_NAMED_PHRASINGS = [
    "{name}: {sentence}.",
    "Define {name}({params}). {sentence}.",
    "Write {name}. {sentence}.",
    "Write a function {name} to {lower}.",
    "I need a function called {name}: {lower}.",
]
UNNAMED_PHRASINGS = ["How do I {lower} in Python?"]
FOLLOW_UPS = ("docstring", "rename", "rename")  # renaming is the copying the model learns last


@dataclass
class Function:
    name: str
    params: str  # the signature's parameters, as written
    sentence: str  # the docstring's first sentence, without its final period
    source: str  # dedented, decorators left out, docstring cut to its first sentence on one line
    bare_source: str  # the same without its docstring
    full_source: str  # as written (dedented, decorators left out): what the eval's length limit measures


def first_sentence(doc: str) -> str | None:
    para = " ".join(doc.strip().split("\n\n")[0].split())
    m = re.match(r"(.+?[.!?])(\s|$)", para)
    sentence = (m.group(1) if m else para).rstrip(".")
    if not 8 <= len(sentence) <= 160 or not sentence[0].isalpha() or ">>>" in sentence:
        return None
    return sentence


def replace_docstring(node: ast.FunctionDef, lines: list[str], doc_line: str | None) -> str:
    """The function's lines with the docstring statement's lines replaced by doc_line (at the
    docstring's indent), or left out when doc_line is None."""
    doc = node.body[0]
    indent = re.match(r"\s*", lines[doc.lineno - node.lineno]).group(0)
    keep = []
    for i, line in enumerate(lines, start=node.lineno):
        if not doc.lineno <= i <= doc.end_lineno:
            keep.append(line)
        elif i == doc.lineno and doc_line is not None:
            keep.append(indent + doc_line)
    if len(node.body) == 1 and doc_line is None:  # a function that is only a docstring keeps a body
        keep.append(indent + "pass")
    return "\n".join(keep)


def short_docstring(sentence: str) -> str:
    """The docstring of the answers: the request's sentence on one line (a copy, short enough that
    greedy decoding does not loop in it)."""
    text = sentence.replace("\\", "\\\\").replace('"', '\\"')
    return f'"""{text}{"" if sentence[-1] in "!?" else "."}"""'


def functions_of(path: Path) -> list[Function]:
    """Module-level functions and methods of module-level classes that have a docstring."""
    text = read_text(path)
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    file_lines = text.splitlines()
    nodes = []
    for top in tree.body:
        if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nodes.append(top)
        elif isinstance(top, ast.ClassDef):
            nodes += [n for n in top.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    out = []
    for node in nodes:
        doc = ast.get_docstring(node)
        if not doc or node.name.startswith("__"):
            continue
        sentence = first_sentence(doc)
        if sentence is None:
            continue
        lines = file_lines[node.lineno - 1:node.end_lineno]  # from `def`: decorators left out
        full = textwrap.dedent("\n".join(lines))
        try:
            ast.parse(full)
        except SyntaxError:  # e.g. a def line that continues a backslash
            continue
        source = textwrap.dedent(replace_docstring(node, lines, short_docstring(sentence)))
        bare = textwrap.dedent(replace_docstring(node, lines, None))
        out.append(Function(node.name, ast.unparse(node.args), sentence, source, bare, full))
    return out


def request(fn: Function, rng: random.Random, named_only: bool = False, unnamed_fraction: float = 0.2) -> str:
    """named_only: the eval's four phrasings; otherwise (training) any named phrasing, and an
    unnamed one ("How do I ...?") for unnamed_fraction of the requests."""
    if named_only:
        phrasings = NAMED_PHRASINGS
    elif rng.random() < unnamed_fraction:
        phrasings = UNNAMED_PHRASINGS
    else:
        phrasings = NAMED_PHRASINGS + TRAIN_NAMED_PHRASINGS
    lower = fn.sentence[0].lower() + fn.sentence[1:]
    return rng.choice(phrasings).format(name=fn.name, params=fn.params, sentence=fn.sentence, lower=lower)


def rename_in(source: str, old: str, new: str) -> str:
    """source with the function old renamed to new: its def and its own calls (bare, or through
    self. / cls.), not other objects' attributes of the same name (`d.get(...)` stays)."""
    return re.sub(rf"(?:(?<=self\.)|(?<=cls\.)|(?<![\w.])){re.escape(old)}\b", new, source)


def renamed(fn: Function, rng: random.Random) -> tuple[str, str]:
    base = fn.name.strip("_")
    new = rng.choice([f"my_{base}", f"{base}_impl", f"do_{base}", f"{base}2"])
    return new, rename_in(fn.source, fn.name, new)


# Syllables for invented identifier words (`pypirc`, `unhex`, `tiff` in held-out names): words no
# training answer has, which only copying letter pieces can reproduce.
ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "x", "z",
          "bl", "br", "ch", "cl", "cr", "dr", "fl", "gr", "pl", "pr", "sh", "sp", "st", "th", "tr", ""]
VOWELS = ["a", "e", "i", "o", "u", "y", "ai", "ee", "io", "ou"]
CODAS = ["", "", "b", "ck", "d", "f", "g", "l", "m", "n", "p", "r", "rc", "s", "t", "x", "ff", "mp", "nd", "st"]
NAME_STYLES = ("snake", "varied")


@dataclass
class NamePool:
    """Identifier words of the training functions' names, for fresh names that no training answer
    pairs with its body: copying them from the request is the only way to get them.

    style "snake": verb_noun[_noun] of those words. "varied": half of them so, the rest camelCase
    (`startElement`), private (`_read_entry`) or with an invented word (`check_plouxd`,
    `_grimp`), as held-out names are; a known word's pieces can be guessed from its first piece,
    an invented one's only copied."""
    verbs: list[str]
    nouns: list[str]
    style: str = "snake"

    def __post_init__(self) -> None:
        if self.style not in NAME_STYLES:
            raise ValueError(f"name style must be one of {NAME_STYLES}, not {self.style!r}")

    @classmethod
    def of(cls, functions: list[Function], style: str = "snake") -> "NamePool":
        verbs, nouns = Counter(), Counter()  # verbs: first words of several names (get, make, ...)
        for fn in functions:
            words = [w for w in fn.name.lower().split("_") if w]
            if len(words) >= 2 and words[0].isalpha():
                verbs[words[0]] += 1
            nouns.update(w for w in words[1:] if w.isalpha() and len(w) >= 3)
        return cls(sorted(w for w, n in verbs.items() if n >= 3), sorted(w for w, n in nouns.items() if n >= 2),
                   style)

    def fresh(self, rng: random.Random, avoid: str) -> str:
        while True:
            name = self._snake(rng) if self.style == "snake" or rng.random() < 0.5 else self._varied(rng)
            if name != avoid:
                return name

    def _snake(self, rng: random.Random) -> str:
        name = f"{rng.choice(self.verbs)}_{rng.choice(self.nouns)}"
        if rng.random() < 0.3:
            name += f"_{rng.choice(self.nouns)}"
        return name

    def _varied(self, rng: random.Random) -> str:
        kind = rng.choice(("camel", "private", "invented", "invented"))
        if kind == "camel":
            words = [rng.choice(self.verbs)] + [rng.choice(self.nouns) for _ in range(rng.choice((1, 1, 2)))]
            return words[0] + "".join(w.capitalize() for w in words[1:])
        if kind == "private":
            return "_" + self._snake(rng)
        word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
                       for _ in range(rng.choice((1, 1, 2, 2, 3))))
        return rng.choice(("", "", "_", f"{rng.choice(self.verbs)}_")) + word


def with_fresh_name(fn: Function, pool: NamePool, rng: random.Random) -> Function:
    new = pool.fresh(rng, fn.name)
    return replace(fn, name=new, source=rename_in(fn.source, fn.name, new),
                   bare_source=rename_in(fn.bare_source, fn.name, new))


def conversation(fn: Function, rng: random.Random, follow_up_fraction: float,
                 unnamed_fraction: float = 0.2, pool: NamePool | None = None,
                 rename_fraction: float = 0.0) -> list[dict]:
    """One conversation: a request and the source; sometimes a second turn. For rename_fraction of
    them (with a pool) the function is first given a fresh name, in the request and the answer."""
    if pool is not None and rng.random() < rename_fraction:
        fn = with_fresh_name(fn, pool, rng)
    user = {"role": "user", "content": request(fn, rng, unnamed_fraction=unnamed_fraction)}
    if rng.random() >= follow_up_fraction:
        return [user, {"role": "assistant", "content": fn.source}]
    if rng.choice(FOLLOW_UPS) == "docstring" and fn.bare_source != fn.source:
        return [user, {"role": "assistant", "content": fn.bare_source},
                {"role": "user", "content": rng.choice(["Now add a docstring.", "Add a docstring to it."])},
                {"role": "assistant", "content": fn.source}]
    new, source = renamed(fn, rng)
    return [user, {"role": "assistant", "content": fn.source},
            {"role": "user", "content": rng.choice([f"Rename it to {new}.", f"Now call it {new} instead.",
                                                    f"Call it {new}.", f"{new} is a better name: rename it."])},
            {"role": "assistant", "content": source}]


def all_functions(files: list[Path]) -> list[Function]:
    return [fn for f in files for fn in functions_of(f)]
