"""Per-token cost of a grammar token mask, llguidance against xgrammar, on this CPU.

    python benchmarks/bench_constraint_libs.py               # 4k vocabulary (the default model) and a 50k one
    python benchmarks/bench_constraint_libs.py --no-50k      # the 4k vocabulary only

The 50k vocabulary is a byte-level BPE trained in seconds with `tokenizers` on the Python standard
library's own sources (no download). For each library and vocabulary: the time to build the
tokenizer tables and compile the grammar (once per tokenizer / per request), then the median time
per generated token of "compute the mask, then accept the token", walking the tokens of a valid
JSON document that matches a schema (and a regex), as a decode loop would."""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import sysconfig
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "kind": {"enum": ["function", "class", "module"]},
        "score": {"type": "number"},
    },
    "required": ["name", "age", "tags", "kind", "score"],
    "additionalProperties": False,
}
DOC = json.dumps({"name": "parse_args of argparse module", "age": 1234, "tags": ["cli", "stdlib", "parser"],
                  "kind": "function", "score": 0.875})
REGEX = r"[a-z_][a-z0-9_]*\((?:[a-z_]+(?:, [a-z_]+)*)?\): [0-9]{1,6}"
REGEX_DOC = "parse_args(argv, namespace, prefix): 123456"


def default_tokenizer():
    from tokenizers import Tokenizer

    path = os.path.join(os.path.dirname(__file__), "..", "mpt_lite", "default_model", "tokenizer.json")
    return Tokenizer.from_file(path)


def trained_50k():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=50_000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((open(f, encoding="utf-8", errors="replace").read() for f in files), trainer)
    return tok


def median_ms(xs):
    return 1e3 * statistics.median(xs)


def bench_llguidance(tok, grammar_kind: str, doc: str, repeats: int):
    import llguidance
    import llguidance.torch as llt

    t0 = time.perf_counter()
    lt = llguidance.LLTokenizer(tok.to_str(), eos_token=0)
    t_tok = time.perf_counter() - t0
    grammar = (llguidance.LLMatcher.grammar_from_json_schema(SCHEMA) if grammar_kind == "json"
               else llguidance.LLMatcher.grammar_from_regex(REGEX))
    ids = tok.encode(doc).ids
    mask = llt.allocate_token_bitmask(1, tok.get_vocab_size())
    per_token, compile_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m = llguidance.LLMatcher(lt, grammar)
        compile_t.append(time.perf_counter() - t0)
        assert not m.is_error(), m.get_error()
        for t in ids:
            t0 = time.perf_counter()
            llt.fill_next_token_bitmask(m, mask)
            ok = m.consume_token(t)
            per_token.append(time.perf_counter() - t0)
            assert ok, m.get_error()
        assert m.is_accepting()
    return t_tok, median_ms(compile_t), median_ms(per_token), len(ids)


def bench_xgrammar(tok, grammar_kind: str, doc: str, repeats: int):
    import transformers
    import xgrammar as xgr

    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=tok.get_vocab_size())
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    t_tok = time.perf_counter() - t0
    ids = tok.encode(doc).ids
    mask = xgr.allocate_token_bitmask(1, info.vocab_size)
    per_token, compile_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        compiled = (compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)
                    if grammar_kind == "json" else compiler.compile_regex(REGEX))
        m = xgr.GrammarMatcher(compiled)
        compile_t.append(time.perf_counter() - t0)
        for t in ids:
            t0 = time.perf_counter()
            m.fill_next_token_bitmask(mask)
            ok = m.accept_token(t)
            per_token.append(time.perf_counter() - t0)
            assert ok, f"xgrammar refused token {t}"
    return t_tok, median_ms(compile_t), median_ms(per_token), len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-50k", action="store_true", help="skip the trained 50k vocabulary")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    vocabs = [("4k (default model)", default_tokenizer())]
    if not args.no_50k:
        t0 = time.perf_counter()
        vocabs.append(("50k (trained)", trained_50k()))
        print(f"trained the 50k tokenizer in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print("| library | vocabulary | grammar | tokenizer set-up ms | compile ms | mask+accept ms/token |")
    print("|---|---|---|---:|---:|---:|")
    for name, tok in vocabs:
        for lib, fn in (("llguidance", bench_llguidance), ("xgrammar", bench_xgrammar)):
            for kind, doc in (("json schema", DOC), ("regex", REGEX_DOC)):
                try:
                    t_tok, comp, per, n = fn(tok, "json" if kind == "json schema" else "regex", doc, args.repeats)
                except ImportError as e:
                    print(f"| {lib} | {name} | {kind} | not installed ({e.name}) | | |")
                    continue
                print(f"| {lib} | {name} ({tok.get_vocab_size()}) | {kind} ({n} tokens) | {1e3 * t_tok:.0f} "
                      f"| {comp:.2f} | {per:.3f} |")


if __name__ == "__main__":
    main()
