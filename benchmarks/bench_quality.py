"""Quality of each weight format on a trained model: held-out perplexity, cost over float and bits
per weight, every row scored on the same windows of the same held-out tokens, so that peers'
rows can stand beside mpt_lite's.

    python benchmarks/bench_quality.py                        # the embedded default model
    python benchmarks/bench_quality.py --model /tmp/wider     # another train_default_model.py run

Each peer is a function (model_dir, stream, seq_len) -> rows, a row being a dict with name,
perplexity, cost_percent (over the first row, the unquantized model), bits_per_weight and bytes
(scripts/eval_default_model.py's rows). Only mpt_lite's peer exists so far: llama.cpp's (our GGUF
converter, llama.cpp's quantizer for Q8_0 / Q4_0 / Q4_K_M, perplexity over the same windows)
is to be added as a second function in PEERS once llama-cpp-python is installed."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import eval_default_model as ev  # noqa: E402

import mpt_lite  # noqa: E402


def mpt_lite_rows(model_dir: Path, stream: list[int], seq_len: int) -> list[dict]:
    """Float, int8, int4 and nf4 (the tied embedding at int8 and, with embedding_bits=4, at 4 bits)."""
    rows = ev.ROWS["default"] + [r for r in ev.ROWS["ablation"] if r[2] == "searched"]
    return [dict(r, peer="mpt_lite") for r in ev.evaluate(model_dir, rows, stream, seq_len)]


PEERS = [mpt_lite_rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=mpt_lite.default_model_path())
    p.add_argument("--max-tokens", type=int, default=None, help="score at most this many held-out tokens")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from mpt_lite import kernels

    kernels.set_num_threads(args.threads)
    stream, seq_len, n_files = ev.held_out(args.model, args.max_tokens)
    print(f"{args.model}: {n_files} held-out files, {len(stream):,} tokens, windows of {seq_len}", file=sys.stderr)
    rows = [row for peer in PEERS for row in peer(args.model, stream, seq_len)]
    print(ev.markdown(rows))


if __name__ == "__main__":
    main()
