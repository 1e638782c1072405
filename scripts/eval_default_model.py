#!/usr/bin/env python
"""Held-out perplexity of the embedded default model in each weight format: unquantized
(float32), int8, nf4 and int4 — the quality cost of each format.

The held-out files are the ones train_default_model.py held out (same seeded split of this
Python's standard library). A format the installed mpt_lite cannot load yet is skipped with the
reason printed. Prints a Markdown table for docs/default_model.md:

    python scripts/eval_default_model.py
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

import mpt_lite  # noqa: E402
from default_model_corpus import held_out_perplexity, split_files, stdlib_files, token_stream  # noqa: E402
from mpt_lite.config import MptConfig  # noqa: E402
from mpt_lite.model.info import format_sizes, human_bytes, parameter_shapes  # noqa: E402

FORMATS = [  # (row name, bits, quant_type, size key)
    ("unquantized (float32)", None, None, "fp32"),
    ("int8", 8, None, "int8"),
    ("nf4", 4, "nf4", "nf4"),
    ("int4", 4, "int4", "int4"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=mpt_lite.default_model_path())
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=None, help="score at most this many held-out tokens")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    info_path = args.model / "training_info.json"
    train_info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    seed, seq_len = train_info.get("seed", 0), train_info.get("seq_len", 256)
    _, held_files = split_files(stdlib_files(), seed)
    tok = mpt_lite.MptTokenizer.from_pretrained(args.model)
    stream = token_stream(tok._tok, held_files, tok.eos_token_id)
    if args.max_tokens:
        stream = stream[: args.max_tokens]
    sizes = format_sizes(parameter_shapes(MptConfig.from_pretrained(args.model)))
    print(f"held-out: {len(held_files)} files of the Python {sys.version.split()[0]} standard library, "
          f"{len(stream):,} tokens, windows of {seq_len}", file=sys.stderr)

    rows, base = [], None
    for name, bits, qtype, size_key in FORMATS:
        kw = {"quant_type": qtype} if qtype else {}
        t0 = time.time()
        try:
            model = mpt_lite.load(args.model, bits=bits, **kw)
        except (ValueError, NotImplementedError, ImportError, RuntimeError) as e:
            reason = " ".join(str(e).split())
            print(f"{name}: skipped ({reason})", file=sys.stderr)
            rows.append(f"| {name} | {human_bytes(sizes[size_key])} | skipped: {reason} | |")
            continue
        ppl, n = held_out_perplexity(model, stream, seq_len)
        base = ppl if bits is None else base
        delta = "" if base is None or bits is None else f"{100 * (ppl / base - 1):+.2f}%"
        print(f"{name}: perplexity {ppl:.3f} over {n:,} tokens ({time.time() - t0:.0f}s)", file=sys.stderr)
        rows.append(f"| {name} | {human_bytes(sizes[size_key])} | {ppl:.3f} | {delta} |")
    print("| format | weights | held-out perplexity | vs unquantized |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    if base is not None:
        print(f"\n(bits per token {math.log2(base):.3f} unquantized)")


if __name__ == "__main__":
    main()
