"""Assistant-model speculative decoding at batch 1: the default model unquantized (float32) as
the target and the same model at 4 bits as its assistant (no smaller MPT shares its tokenizer),
against plain greedy decoding of the target. Medians of --repeats, interleaved; outputs checked
equal.

    python benchmarks/bench_assistant.py [--k 5] [--new 200] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

PROMPT = "def parse_header(line):\n"


def run(engine_kw: dict, model, ids: list[int], new: int) -> tuple[float, list[int], int, int]:
    from mpt_lite import Engine

    engine = Engine(model, num_blocks=-(-(len(ids) + new) // 16) + 1, max_num_seqs=1, **engine_kw)
    req = engine.add_request(ids, new)
    engine.step()
    t0 = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    return (len(req.output) - 1) / (time.perf_counter() - t0), req.output, req.drafted, req.accepted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=5, help="num_assistant_tokens")
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import mpt_lite

    target, helper = mpt_lite.load(bits=None), mpt_lite.load(bits=4)
    ids = target.tokenizer.encode(PROMPT)
    plain, fast, rate = [], [], []
    for _ in range(args.repeats):
        p, out0, _, _ = run({}, target, ids, args.new)
        f, out1, drafted, accepted = run({"assistant_model": helper, "num_assistant_tokens": args.k}, target, ids,
                                         args.new)
        if out0 != out1:
            raise SystemExit("greedy outputs differ with the assistant")
        plain.append(p)
        fast.append(f)
        rate.append(accepted / max(1, drafted))
    p, f = statistics.median(plain), statistics.median(fast)
    print(f"default model float32 target, 4-bit assistant, K={args.k}, {args.new} new tokens, medians of "
          f"{args.repeats}; MPT_LITE_NUM_THREADS={os.environ.get('MPT_LITE_NUM_THREADS', 'default')}, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"plain {p:.1f} tok/s, with assistant {f:.1f} tok/s, {f / p:.2f}x, acceptance {statistics.median(rate):.0%}")


if __name__ == "__main__":
    main()
