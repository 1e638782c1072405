"""Prompt-lookup decoding on the embedded default model, batch 1: decode tokens/s with and without
it on a copy-heavy prompt (a stdlib function quoted, then asked for again) and on free text, and
the acceptance rate (accepted / drafted tokens). Medians of --repeats runs, plain and lookup runs
interleaved so that machine load hits both alike. Greedy: the outputs are checked to be equal;
sampled (the rejection rule keeps the distribution, not the draws): free text where the output
rarely repeats itself.

    python benchmarks/bench_prompt_lookup.py [--k 10] [--new 200] [--repeats 3]
"""
from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import textwrap
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

FREE = "The weather in the mountains changes quickly, and the people who live there"


def copy_prompt() -> str:
    src = inspect.getsource(textwrap.dedent)
    return src + "\n\n# The same method again, unchanged:\n" + src[:80]


def run(model, ids: list[int], new: int, k: int | None, sampling: dict) -> tuple[float, list[int], int, int]:
    """(decode tokens/s after the prefill step, output, drafted, accepted)."""
    from mpt_lite import Engine

    engine = Engine(model, num_blocks=-(-(len(ids) + new) // 16) + 1, max_num_seqs=1)
    req = engine.add_request(ids, new, prompt_lookup_num_tokens=k, **sampling)
    engine.step()  # the prefill and the first token
    t0 = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    dt = time.perf_counter() - t0
    return (len(req.output) - 1) / dt, req.output, req.drafted, req.accepted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=10, help="prompt_lookup_num_tokens")
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import mpt_lite

    model = mpt_lite.load()
    print(f"default model (4-bit), batch 1, {args.new} new tokens, K={args.k}, medians of {args.repeats}; "
          f"MPT_LITE_NUM_THREADS={os.environ.get('MPT_LITE_NUM_THREADS', 'default')}, load {os.getloadavg()[0]:.1f}")
    print("| prompt | prompt tokens | plain tok/s | lookup tok/s | speed-up | acceptance | tokens/step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    sampled = dict(do_sample=True, temperature=0.8, top_p=0.95, seed=0)
    for name, text, sampling in (("copy-heavy", copy_prompt(), {}), ("free text", FREE, {}),
                                 ("free text, sampled T=0.8", FREE, sampled)):
        ids = model.tokenizer.encode(text)
        plain, fast, rate, per_step = [], [], [], []
        for _ in range(args.repeats):
            tps0, out0, _, _ = run(model, ids, args.new, None, sampling)
            tps1, out1, drafted, accepted = run(model, ids, args.new, args.k, sampling)
            if not sampling and out0 != out1:
                raise SystemExit(f"{name}: greedy outputs differ with prompt lookup")
            plain.append(tps0)
            fast.append(tps1)
            rate.append(accepted / drafted if drafted else 0.0)
            per_step.append(len(out1) / max(1, len(out1) - accepted))
        p, f = statistics.median(plain), statistics.median(fast)
        print(f"| {name} | {len(ids)} | {p:.1f} | {f:.1f} | {f / p:.2f}x | {statistics.median(rate):.0%} | "
              f"{statistics.median(per_step):.2f} |")


if __name__ == "__main__":
    main()
