"""What each KV cache dtype costs in quality on a trained model: held-out perplexity of the embedded default
model (4-bit weights, as `mpt-lite chat` loads it) computed through the paged KV cache, each window of
--seq-len tokens written to a cache of the given dtype and attended over from there (the engine's prefill
path), beside the same windows through a float32 cache. Also the share of positions whose most likely next
token differs from the float32 cache's, and the largest log-probability difference.

    python benchmarks/bench_kv_quality.py                      # float32, bfloat16, int8, int4; windows of 1024
    python benchmarks/bench_kv_quality.py --windows 8 --kv-dtypes int8 int4
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import eval_default_model as ev  # noqa: E402

import mpt_lite  # noqa: E402
from mpt_lite.runtime.kv_budget import KV_DTYPE_NAMES  # noqa: E402
from mpt_lite.runtime.kv_cache import PagedKVCache, PagedStep  # noqa: E402


def window_logprobs(model, ids: list[int], dtype: torch.dtype) -> torch.Tensor:
    """log-softmax of every position's logits, the window prefilled through a fresh paged cache of dtype."""
    cfg = model.config
    cache = PagedKVCache(cfg.n_layers, cfg.kv_n_heads, cfg.head_dim, num_blocks=len(ids) // 16 + 2, dtype=dtype)
    seq = cache.match_prefix([])
    cache.grow(seq, len(ids))
    step = PagedStep(cache, [seq], [0], [len(ids)])
    with torch.inference_mode():
        logits = model.forward_paged(torch.tensor(ids), step, torch.arange(len(ids)))
    return torch.log_softmax(logits.double(), -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "mpt_lite" / "default_model"))
    ap.add_argument("--bits", type=int, default=4, choices=[4, 8])
    ap.add_argument("--kv-dtypes", nargs="+", default=["bfloat16", "int8", "int4"], choices=list(KV_DTYPE_NAMES))
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=24, help="held-out windows scored")
    args = ap.parse_args()
    model = mpt_lite.load(args.model, bits=args.bits)
    stream, _, n_files = ev.held_out(Path(args.model), args.seq_len * args.windows + 1)
    n = min(args.windows, (len(stream) - 1) // args.seq_len)
    windows = [stream[i * args.seq_len:(i + 1) * args.seq_len + 1] for i in range(n)]
    names = ["float32"] + [d for d in args.kv_dtypes if d != "float32"]
    nll = {d: 0.0 for d in names}
    flips = {d: 0 for d in names}
    worst = {d: 0.0 for d in names}
    count = 0
    for w in windows:
        ids, target = w[:-1], torch.tensor(w[1:])
        base = window_logprobs(model, ids, torch.float32)
        for d in names:
            lp = base if d == "float32" else window_logprobs(model, ids, KV_DTYPE_NAMES[d])
            nll[d] -= lp.gather(1, target[:, None]).sum().item()
            flips[d] += int((lp.argmax(-1) != base.argmax(-1)).sum())
            worst[d] = max(worst[d], (lp - base).abs().max().item())
        count += len(ids)
    ppl0 = math.exp(nll["float32"] / count)
    print(f"{args.model}: {args.bits}-bit weights, {n} held-out windows of {args.seq_len} tokens ({count:,} "
          f"scored, from {n_files} held-out files)\n")
    print("| KV dtype | held-out perplexity | vs float32 KV | top-1 changed | largest logprob change |")
    print("|---|---:|---:|---:|---:|")
    for d in names:
        ppl = math.exp(nll[d] / count)
        print(f"| {d} | {ppl:.3f} | {100 * (ppl / ppl0 - 1):+.2f}% | {100 * flips[d] / count:.2f}% | {worst[d]:.3f} |")


if __name__ == "__main__":
    main()
