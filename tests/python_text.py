"""Is generated text plausible Python? The oracle is Python's own parser and tokenizer."""
from __future__ import annotations

import ast
import io
import keyword
import tokenize


def parsable_prefix(text: str) -> str:
    """The longest prefix of complete lines (a trailing partial line is dropped) that ast.parse
    accepts; "" when none does."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    for n in range(len(lines), 0, -1):
        try:
            ast.parse("".join(lines[:n]))
        except SyntaxError:
            continue
        return "".join(lines[:n])
    return ""


def code_words(code: str, after_line: int = 0) -> tuple[set[str], set[str]]:
    """(keywords, identifiers) among the tokens of `code` (which must tokenize) that start on a
    line after `after_line`."""
    keywords, identifiers = set(), set()
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.NAME and tok.start[0] > after_line:
            (keywords if keyword.iskeyword(tok.string) else identifiers).add(tok.string)
    return keywords, identifiers


def assert_plausible_python(prompt: str, completion: str, min_lines: int = 3) -> None:
    """prompt + completion: at least `min_lines` lines of the completion parse as Python along with
    the prompt, and those lines hold keywords and several identifiers (not just a string)."""
    text = prompt + completion
    prefix = parsable_prefix(text)
    prompt_lines = prompt.count("\n") + 1
    new_lines = prefix.count("\n") - prompt_lines + 1
    assert new_lines >= min_lines, f"only {new_lines} completion lines parse:\n{text}"
    keywords, identifiers = code_words(prefix, after_line=prompt_lines)
    assert keywords and len(identifiers) >= 2, f"parsed lines hold keywords {keywords}, names {identifiers}:\n{text}"
