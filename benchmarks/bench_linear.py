"""y = x @ W^T on the mpt-7b Linear shapes: mpt_lite int8 / nf4 / int4 kernels against torch's
float32 and bfloat16 F.linear, in the same process and on the same threads. Prints median times
and the speed-up over float32 (ratio > 1: faster than float32).

    python benchmarks/bench_linear.py            # all shapes, M = 1, 8, 128, 512
    python benchmarks/bench_linear.py --quick    # two shapes, M = 1 and 512, fewer repeats
    python benchmarks/bench_linear.py --ms 128 512 --q8-tiles   # also int8 / int4 with q8=True
                                                 # (the integer GEMM tiles above 16 rows)

int8, nf4 and int4 take the default activation choice (layouts.use_q8: q8 up to Q8_MAX_ROWS = 16 rows, and
at any row count from Q8_GEMM_MIN_K in_features on, which every shape here has; where the CPU has AMX,
layouts.use_bf16: from AMX_MIN_ROWS rows on, bf16 operands on the AMX tiles instead);
the timed runs of all columns alternate (A B C ... A B C ...) so load changes hit every column alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from mpt_lite import ops

SHAPES = [(4096, 12288), (4096, 4096), (4096, 16384), (16384, 4096)]  # (in, out): Wqkv, out_proj, up, down
MS = [1, 8, 128, 512]


_FLUSH: torch.Tensor | None = None


def flush_caches() -> None:
    """Evicts the weights from the last-level cache (260 MB here, larger than most of these
    matrices in fp32): a 7B model's weights never stay cached between two uses, so decode timings
    with warm caches would flatter whichever format is largest."""
    if _FLUSH is not None:
        _FLUSH.sum()


def timings(fns: dict, repeats: int, min_time: float) -> dict[str, list[float]]:
    """Times of each callable, in rounds that run every one once (alternating)."""
    for fn in fns.values():
        fn()  # warm up (page in the weights, start the pools)
    times = {key: [] for key in fns}
    t_end = time.perf_counter() + min_time * len(fns)
    rounds = 0
    while rounds < repeats or (time.perf_counter() < t_end and rounds < 4 * repeats):
        for key, fn in fns.items():
            flush_caches()
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
        rounds += 1
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two shapes, M = 1 and 512, fewer repeats")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="threads for torch and for mpt_lite (default: the cores this process may use)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per cell (median reported)")
    ap.add_argument("--warm", action="store_true",
                    help="do not flush the caches between runs (weights may stay in the L3 cache)")
    ap.add_argument("--flush-mb", type=int, default=512, help="size of the buffer read to flush caches")
    ap.add_argument("--ms", type=int, nargs="+", default=None, help="row counts (default 1 8 128 512)")
    ap.add_argument("--q8-tiles", action="store_true",
                    help="also time int8 / nf4 / int4 with q8 activations (q8=True: the integer GEMM tiles above 16 rows)")
    args = ap.parse_args()
    global _FLUSH
    if not args.warm:
        _FLUSH = torch.ones(args.flush_mb * 2**20 // 4)
    shapes = SHAPES[1:3] if args.quick else SHAPES
    ms = args.ms or ([1, 512] if args.quick else MS)
    repeats = args.repeats or (3 if args.quick else 7)
    torch.set_num_threads(args.threads)
    ops.set_num_threads(args.threads)
    print(f"threads={args.threads} isa={ops.current_isa()} torch={torch.__version__} repeats={repeats} (median)"
          f" caches={'warm' if args.warm else f'flushed ({args.flush_mb} MB read) before each run'}")
    cols = ["bf16", "int8", "nf4", "int4"] + (["int8 q8", "nf4 q8", "int4 q8"] if args.q8_tiles else [])
    header = f"{'in->out':>12} {'M':>4} | {'fp32 ms':>8} " + " ".join(f"{c + ' ms':>9}" for c in cols) + " | " + \
        " ".join(f"{c:>6}" for c in cols) + "  (x faster than fp32, medians) [same, best runs]"
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    for k, n in shapes:
        w = torch.randn(n, k, generator=gen) * 0.02
        wb = w.to(torch.bfloat16)
        q8 = ops.quantize_int8(w)
        q4 = ops.quantize_nf4(w)
        qi = ops.quantize_int4(w)
        for m in ms:
            x = torch.randn(m, k, generator=gen)
            xb = x.to(torch.bfloat16)
            min_time = 0.3 if args.quick else 1.0
            fns = {
                "fp32": lambda: F.linear(x, w),
                "bf16": lambda: F.linear(xb, wb),
                "int8": lambda: ops.matmul_int8(x, *q8),
                "nf4": lambda: ops.matmul_nf4(x, *q4, (n, k)),
                "int4": lambda: ops.matmul_int4(x, *qi, k),
            }
            if args.q8_tiles:
                fns["int8 q8"] = lambda: ops.matmul_int8(x, *q8, q8=True)
                fns["nf4 q8"] = lambda: ops.matmul_nf4(x, *q4, (n, k), q8=True)
                fns["int4 q8"] = lambda: ops.matmul_int4(x, *qi, k, q8=True)
            runs = timings(fns, repeats, min_time)
            t = {key: statistics.median(v) for key, v in runs.items()}
            best = {key: min(v) for key, v in runs.items()}
            print(f"{f'{k}->{n}':>12} {m:>4} | {t['fp32'] * 1e3:8.2f} " + " ".join(f"{t[c] * 1e3:9.2f}" for c in cols) +
                  " | " + " ".join(f"{t['fp32'] / t[c]:6.2f}" for c in cols) +
                  "  [best-of: " + " ".join(f"{best['fp32'] / best[c]:.2f}" for c in cols) + "]", flush=True)
        del w, wb, q8, q4, qi


if __name__ == "__main__":
    main()
