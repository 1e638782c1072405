"""Decode speed after a context shift against decode speed at the same kept length without one
(the shift recomputes nothing, so the two should match), on the embedded default model at batch
1, with max_seq_len raised to each --context (ALiBi needs no position table).

    python benchmarks/bench_context_shift.py [--contexts 1024 8192] [--new 48] [--repeats 3]

shifted: a prompt of context-16 tokens decodes --new tokens with context_shift=True, so it passes
the window after 16 and shifts a block every 16 tokens; timed over the steps after the first
shift. plain: a prompt of context-new tokens decodes --new tokens up to exactly the window, no
shift. Medians of --repeats, the two interleaved."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def decode_rate(model, prompt: list[int], new: int, shift: bool) -> tuple[float, int]:
    """(decode tokens/s, tokens dropped) over the steps after the first shift (or after the prefill)."""
    from mpt_lite import Engine

    engine = Engine(model, num_blocks=-(-model.config.max_seq_len // 16), max_num_seqs=1)
    req = engine.add_request(prompt, new, context_shift=shift, keep_cache=True)
    while not req.output or (shift and not req.blocks.dropped):
        engine.step()
    n0, t0 = len(req.output), time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    return (len(req.output) - n0) / (time.perf_counter() - t0), req.blocks.dropped


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import mpt_lite

    print(f"default model (4-bit), batch 1, medians of {args.repeats}; "
          f"MPT_LITE_NUM_THREADS={os.environ.get('MPT_LITE_NUM_THREADS', 'default')}, load {os.getloadavg()[0]:.1f}")
    print("| context | plain decode tok/s (kept length ~context) | after a shift tok/s | ratio | tokens dropped |")
    print("|---:|---:|---:|---:|---:|")
    for ctx in args.contexts:
        model = mpt_lite.load(max_seq_len=ctx)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(5, len(model.tokenizer) - 2, (ctx,), generator=g).tolist()
        plain, shifted, dropped = [], [], 0
        for _ in range(args.repeats):
            plain.append(decode_rate(model, ids[:ctx - args.new], args.new, False)[0])
            rate, dropped = decode_rate(model, ids[:ctx - 16], args.new, True)
            shifted.append(rate)
        p, s = statistics.median(plain), statistics.median(shifted)
        print(f"| {ctx} | {p:.1f} | {s:.1f} | {s / p:.2f} | {dropped} |")


if __name__ == "__main__":
    main()
