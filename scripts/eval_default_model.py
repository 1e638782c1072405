#!/usr/bin/env python
"""Held-out perplexity of the embedded default model (or another checkpoint trained by
train_default_model.py) in each weight format: the quality cost of each format, its bits per
weight, and what the quality issue's two changes (the tied embedding at int8, searched block
scales) bring over the 4-bit formats before them.

The held-out files are the ones train_default_model.py held out (same seeded split of this
Python's standard library). A format the installed mpt_lite cannot load is skipped with the
reason printed. Prints a Markdown table for docs/default_model.md:

    python scripts/eval_default_model.py                 # every row, ~3 min on 2 busy cores
    python scripts/eval_default_model.py --rows default  # float, int8 and the 4-bit defaults

bits/weight counts the quantized matrices only (every block Linear and the tied embedding, codes
and scales), as llama.cpp counts its types; the weights column is the whole model in memory.
"""
from __future__ import annotations

import argparse
import contextlib
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
from mpt_lite import kernels  # noqa: E402
from mpt_lite.model.info import human_bytes  # noqa: E402
from mpt_lite.quant import QuantLinear, quantized_modules  # noqa: E402

# (row name, load() keywords, block scales: "searched" (mpt_lite's quantizer) or "absmax")
ROWS = {
    "default": [
        ("unquantized (float32)", dict(bits=None), "searched"),
        ("int8", dict(bits=8), "searched"),
        ("int4 (default 4-bit; embedding int8)", dict(bits=4, quant_type="int4"), "searched"),
        ("nf4 (embedding int8)", dict(bits=4, quant_type="nf4"), "searched"),
    ],
    "ablation": [
        ("int4, embedding_bits=4", dict(bits=4, quant_type="int4", embedding_bits=4), "searched"),
        ("nf4, embedding_bits=4", dict(bits=4, quant_type="nf4", embedding_bits=4), "searched"),
        ("int4, absmax scales (embedding int8)", dict(bits=4, quant_type="int4"), "absmax"),
        ("nf4, absmax scales (embedding int8)", dict(bits=4, quant_type="nf4"), "absmax"),
        ("int4, absmax scales, embedding_bits=4 (before)", dict(bits=4, quant_type="int4", embedding_bits=4), "absmax"),
        ("nf4, absmax scales, embedding_bits=4 (before)", dict(bits=4, quant_type="nf4", embedding_bits=4), "absmax"),
    ],
}


@contextlib.contextmanager
def block_scales(method: str):
    """Quantize with the absmax kernels instead of the searched ones (the quantizer before the
    quality issue), for comparison only."""
    if method == "searched":
        yield
        return
    saved = kernels.search_quantize_int4, kernels.search_quantize_nf4
    kernels.search_quantize_int4, kernels.search_quantize_nf4 = kernels.quantize_int4, kernels.quantize_nf4
    try:
        yield
    finally:
        kernels.search_quantize_int4, kernels.search_quantize_nf4 = saved


def bits_per_weight(model) -> float:
    """Bits per weight of the quantized matrices (codes + scales); 8 * element size when float."""
    mods = quantized_modules(model)
    if not mods:
        return 8.0 * next(model.parameters()).element_size()
    nbytes = sum(t.numel() * t.element_size() for m in mods.values() for t in m.codes().values())
    return 8.0 * nbytes / sum(m.rows * m.cols for m in mods.values())


def block_bits_per_weight(model) -> float | None:
    """Bits per weight of the block Linears alone (int4: 4.5 with its fp16 group scales)."""
    mods = [m for m in quantized_modules(model).values() if isinstance(m, QuantLinear)]
    if not mods:
        return None
    nbytes = sum(t.numel() * t.element_size() for m in mods for t in m.codes().values())
    return 8.0 * nbytes / sum(m.rows * m.cols for m in mods)


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def held_out(model_dir: Path, max_tokens: int | None) -> tuple[list[int], int, int]:
    info_path = model_dir / "training_info.json"
    train_info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    seed, seq_len = train_info.get("seed", 0), train_info.get("seq_len", 256)
    _, held_files = split_files(stdlib_files(), seed)
    tok = mpt_lite.MptTokenizer.from_pretrained(model_dir)
    stream = token_stream(tok._tok, held_files, tok.eos_token_id)
    return (stream[:max_tokens] if max_tokens else stream), seq_len, len(held_files)


def evaluate(model_dir: Path, rows: list, stream: list[int], seq_len: int) -> list[dict]:
    """One dict per row: name, perplexity (None if skipped), cost over the first (float) row,
    bits per weight, bytes, and the skip reason if any."""
    out, base = [], None
    for name, kw, scales in rows:
        t0 = time.time()
        try:
            with block_scales(scales):
                model = mpt_lite.load(model_dir, **kw)
        except (ValueError, NotImplementedError, ImportError, RuntimeError) as e:
            reason = " ".join(str(e).split())
            print(f"{name}: skipped ({reason})", file=sys.stderr)
            out.append({"name": name, "perplexity": None, "skipped": reason})
            continue
        ppl, n = held_out_perplexity(model, stream, seq_len)
        base = ppl if kw.get("bits") is None else base
        cost = None if base is None or kw.get("bits") is None else 100 * (ppl / base - 1)
        out.append({"name": name, "perplexity": ppl, "cost_percent": cost, "bits_per_weight": bits_per_weight(model),
                    "block_bits_per_weight": block_bits_per_weight(model), "bytes": model_bytes(model), "tokens": n})
        print(f"{name}: perplexity {ppl:.3f} over {n:,} tokens ({time.time() - t0:.0f}s)", file=sys.stderr)
    return out


def markdown(results: list[dict]) -> str:
    lines = ["| format | bits/weight | block Linears bits/weight | weights | held-out perplexity | vs unquantized |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        if r["perplexity"] is None:
            lines.append(f"| {r['name']} | | | | skipped: {r['skipped']} | |")
            continue
        cost = "" if r["cost_percent"] is None else f"{r['cost_percent']:+.2f}%"
        block = r.get("block_bits_per_weight")
        lines.append(f"| {r['name']} | {r['bits_per_weight']:.2f} | {'' if block is None else f'{block:.2f}'} | "
                     f"{human_bytes(r['bytes'])} | {r['perplexity']:.3f} | {cost} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=mpt_lite.default_model_path())
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=None, help="score at most this many held-out tokens")
    p.add_argument("--rows", choices=("default", "all"), default="all")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)

    stream, seq_len, n_files = held_out(args.model, args.max_tokens)
    print(f"held-out: {n_files} files of the Python {sys.version.split()[0]} standard library, "
          f"{len(stream):,} tokens, windows of {seq_len}", file=sys.stderr)
    rows = ROWS["default"] + (ROWS["ablation"] if args.rows == "all" else [])
    results = evaluate(args.model, rows, stream, seq_len)
    print(markdown(results))
    if results and results[0]["perplexity"] is not None:
        print(f"\n(bits per token {math.log2(results[0]['perplexity']):.3f} unquantized)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
