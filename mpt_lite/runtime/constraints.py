"""Constrained decoding: output that follows a JSON schema, a regular expression or a Lark grammar.

llguidance (the optional `structured` extra) computes, at every step, the set of tokens that keep
the output a prefix of some string of the grammar; the engine masks every other logit of that row
(-inf) before sampling, for all constrained rows of a batch at once. A request's matcher advances
with each token it accepts; once the grammar can take nothing more the request ends ("stop").

    make = constraint_factory(model.tokenizer, json_schema={"type": "object"})
    engine.add_request(ids, 64, constraint=make())        # one matcher per request
"""
from __future__ import annotations

import json
import weakref
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

INSTALL_HINT = "structured output needs llguidance: pip install 'mpt_lite[structured]'"

# json.dumps' layout; free whitespace lets a small model wander in blanks until max_tokens
# (a schema's "x-guidance" options may still ask for it)
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

_executor = None
_tables: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _llguidance():
    try:
        import llguidance
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return llguidance


def token_tables(tokenizer: Any):
    """llguidance's tables for a tokenizer (built once per tokenizer: ~0.1 s at 4k tokens, ~1 s at 50k)."""
    tables = _tables.get(tokenizer)
    if tables is None:
        llg = _llguidance()
        tables = llg.LLTokenizer(tokenizer.to_json(), eos_token=tokenizer.eos_token_id)
        _tables[tokenizer] = tables
    return tables


def grammar_text(json_schema: Any = None, regex: str | None = None, grammar: str | None = None) -> str | None:
    """The llguidance grammar for one of the three kinds of constraint (None when none is given);
    ValueError/TypeError naming the problem when the constraint itself is malformed."""
    given = [k for k, v in (("json_schema", json_schema), ("regex", regex), ("grammar", grammar)) if v is not None]
    if not given:
        return None
    if len(given) > 1:
        raise ValueError(f"give at most one of json_schema, regex and grammar, got {' and '.join(given)}")
    llg = _llguidance()
    if json_schema is not None:
        schema = _schema(json_schema)
        return llg.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)
    if regex is not None:
        if not isinstance(regex, str) or not regex:
            raise TypeError(f"regex must be a non-empty string, got {regex!r}")
        return llg.LLMatcher.grammar_from_regex(regex)
    if not isinstance(grammar, str) or not grammar.strip():
        raise TypeError(f"grammar must be a non-empty Lark grammar string, got {grammar!r}")
    return llg.LLMatcher.grammar_from_lark(grammar)


def _schema(json_schema: Any) -> dict:
    if isinstance(json_schema, str):
        try:
            json_schema = json.loads(json_schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"json_schema is not valid JSON: {e}") from e
    if isinstance(json_schema, bool):  # true: anything; false: nothing can match
        if not json_schema:
            raise ValueError("json_schema false matches no value")
        json_schema = {}
    if not isinstance(json_schema, dict):
        raise TypeError(f"json_schema must be a dict (or its JSON text), got {type(json_schema).__name__}")
    try:
        import jsonschema
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    try:
        jsonschema.validators.validator_for(json_schema).check_schema(json_schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise ValueError(f"json_schema is not a valid JSON schema at {where}: {e.message}") from e
    return json_schema


class Constraint:
    """One request's matcher: the tokens it allows next, and whether the grammar is complete."""

    def __init__(self, matcher: Any, eos_token: int | None, n_tokens: int) -> None:
        self.matcher = matcher
        self.eos_token = eos_token  # the token llguidance allows once the output is complete
        self.n_tokens = n_tokens  # the tokenizer's tokens (the mask's width)

    def advance(self, token: int) -> bool:
        """Accepts a sampled token; True once the grammar takes nothing more (the request ends)."""
        if not self.matcher.consume_token(int(token)):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")
        return self.matcher.is_stopped()


def constraint_factory(tokenizer: Any, json_schema: Any = None, regex: str | None = None,
                       grammar: str | None = None) -> Callable[[], Constraint] | None:
    """Checks the constraint once and returns a maker of fresh matchers (one per request), or
    None when no constraint is given. An invalid schema, regex or grammar is a ValueError."""
    text = grammar_text(json_schema, regex, grammar)
    if text is None:
        return None
    if tokenizer is None:
        raise ValueError("constrained decoding needs the model's tokenizer (tokenizer.json in its checkpoint)")
    llg = _llguidance()
    tables = token_tables(tokenizer)
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(text, tables)
    if is_error:
        kind = "json_schema" if json_schema is not None else "regex" if regex is not None else "grammar"
        raise ValueError(f"invalid {kind}: {messages[0] if messages else 'rejected by llguidance'}")
    first = llg.LLMatcher(tables, text, log_level=0)
    if first.is_error():
        raise ValueError(f"invalid constraint: {first.get_error()}")
    eos, n_tokens = tables.eos_token, tables.vocab_size

    def make() -> Constraint:
        return Constraint(first.deep_copy(), eos, n_tokens)

    return make


def _allowed_rows(matchers: Sequence[Any], n_tokens: int) -> np.ndarray:
    """(rows, n_tokens) uint8, 1 where a matcher allows the token next."""
    global _executor
    words = (n_tokens + 31) // 32
    bits = np.zeros((len(matchers), words), dtype="<i4")  # bit j of word w is token 32 w + j
    if len(matchers) <= 2:  # the executor's threads pay off from a few rows on
        for i, m in enumerate(matchers):
            m.unsafe_compute_mask_ptr(bits.ctypes.data + i * words * 4, words * 4)
    else:
        if _executor is None:
            _executor = _llguidance().LLExecutor()
        _executor.unsafe_compute_mask_ptr([(m, i) for i, m in enumerate(matchers)], bits.ctypes.data, words * 4,
                                          len(matchers))
    return np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :n_tokens]


def constrain_logits(logits: torch.Tensor, constraints: Sequence[Constraint | None],
                     eos_sets: Sequence[Iterable[int]]) -> torch.Tensor:
    """logits (rows, vocab) with every token a row's constraint forbids at -inf (a new tensor; rows
    without a constraint are untouched). Where the grammar allows its end, the row's own eos
    tokens are allowed too."""
    rows = [i for i, c in enumerate(constraints) if c is not None]
    if not rows:
        return logits
    vocab = logits.shape[-1]
    n_tokens = constraints[rows[0]].n_tokens
    width = min(vocab, n_tokens)  # embedding rows beyond the tokenizer stay forbidden
    allowed = _allowed_rows([constraints[i].matcher for i in rows], n_tokens)
    forbid = np.zeros(tuple(logits.shape), dtype=bool)
    forbid[rows] = True
    forbid[rows, :width] = allowed[:, :width] == 0
    for j, i in enumerate(rows):
        eos = constraints[i].eos_token
        if eos is not None and eos < width and allowed[j, eos]:
            extra = [e for e in eos_sets[i] if 0 <= e < vocab]
            forbid[i, extra] = False
    return logits.masked_fill(torch.from_numpy(forbid).to(logits.device), float("-inf"))
