"""Decode speed after a context shift against decode speed at the same kept length without one
(the shift recomputes nothing, so the two should match), on the embedded default model at batch
1, with max_seq_len raised to each --contexts value (ALiBi needs no position table).

    python benchmarks/bench_context_shift.py [--contexts 1024 8192] [--new 90] [--repeats 3]

shifted: a prompt of context-16 tokens decodes with context_shift=True until it has shifted
(it then drops a block every 16 tokens and stays within 16 tokens of the window). plain: a prompt
of context-new-1 tokens decodes up to the window, no shift. Their steps alternate (one of each,
the order swapped every time) so machine load hits both alike; tokens/s over --repeats
consecutive windows of the --new steps, medians reported."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--new", type=int, default=90)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import mpt_lite
    from mpt_lite import Engine

    print(f"default model (4-bit), batch 1, {args.new} steps each, medians of {args.repeats} windows; "
          f"MPT_LITE_NUM_THREADS={os.environ.get('MPT_LITE_NUM_THREADS', 'default')}, load {os.getloadavg()[0]:.1f}")
    print("| context | plain decode tok/s (kept length ~context) | after a shift tok/s | ratio | tokens dropped | "
          "computed tokens (shifted) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for ctx in args.contexts:
        model = mpt_lite.load(max_seq_len=ctx)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(5, len(model.tokenizer) - 2, (ctx,), generator=g).tolist()
        shifted = Engine(model, num_blocks=ctx // 16, max_num_seqs=1)
        a = shifted.add_request(ids[:ctx - 16], 10 * args.new, context_shift=True, keep_cache=True)
        plain = Engine(model, num_blocks=ctx // 16, max_num_seqs=1)
        b = plain.add_request(ids[:ctx - args.new - 1], args.new, keep_cache=True)
        while not a.blocks or not a.blocks.dropped:
            shifted.step()
        plain.step()  # its prefill
        times: dict[str, list[float]] = {"a": [], "b": []}
        for i in range(args.new - 1):
            order = (("a", shifted), ("b", plain)) if i % 2 else (("b", plain), ("a", shifted))
            for name, engine in order:
                t0 = time.perf_counter()
                engine.step()
                times[name].append(time.perf_counter() - t0)
        w = len(times["a"]) // args.repeats

        def rate(ts: list[float]) -> float:
            return statistics.median(w / sum(ts[k * w:(k + 1) * w]) for k in range(args.repeats))

        p, s = rate(times["b"]), rate(times["a"])
        print(f"| {ctx} | {p:.1f} | {s:.1f} | {s / p:.2f} | {a.blocks.dropped} | "
              f"{shifted.stats['computed_tokens']} of {len(a.tokens) - 1} |")


if __name__ == "__main__":
    main()
