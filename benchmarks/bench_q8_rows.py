"""Cost of the q8 (integer-activation) int4 / int8 / nf4 matmuls by row count: one synthetic-1.3B layer
(Wqkv, out_proj, up, down), timed at M = 1, 4, 8, 16 rows, runs alternating, and the cost of each M
relative to M = 1 (a batch of M decoding sequences costs this much more than one per layer), and the
multiply-adds a second. The weights are in the rows8 layout that the model repacks them into at load on x86
(`--layout row`: the saved layout, which other kernels read).

    python benchmarks/bench_q8_rows.py [--threads 2] [--repeats 9] [--formats int4,int8,nf4] [--rows 1,8,64,512]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from mpt_lite import ops

SHAPES = [(2048, 6144), (2048, 2048), (2048, 8192), (8192, 2048)]  # (in, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--rows", default="1,4,8,16")
    ap.add_argument("--formats", default="int4,int8,nf4")
    ap.add_argument("--layout", choices=["rows8", "row"], default="rows8")
    args = ap.parse_args()
    Ms = [int(m) for m in args.rows.split(",")]
    fmts = args.formats.split(",")
    torch.manual_seed(0)
    rows8 = args.layout == "rows8"
    weights = {}
    for K, N in SHAPES:
        w = torch.randn(N, K) * 0.02
        q = {"int4": ops.quantize_int4(w), "int8": ops.quantize_int8(w), "nf4": ops.quantize_nf4(w)}
        if rows8:
            q = {"int4": ops.int4_to_rows8(*q["int4"], K), "int8": (ops.int8_to_rows8(*q["int8"]), q["int8"][1]),
                 "nf4": ops.nf4_to_rows8(*q["nf4"], (N, K))}
        weights[K, N] = q
    times: dict = {}
    for _ in range(args.repeats):
        for fmt in fmts:
            for M in Ms:
                t = 0.0
                for K, N in SHAPES:
                    x, q = torch.randn(M, K), weights[K, N][fmt]
                    if fmt == "int4":
                        def f():
                            ops.matmul_int4(x, *q, K, q8=True, num_threads=args.threads, rows8=rows8)
                    elif fmt == "nf4":
                        def f():
                            ops.matmul_nf4(x, *q, (N, K), q8=True, num_threads=args.threads, rows8=rows8)
                    else:
                        def f():
                            ops.matmul_int8(x, *q, q8=True, num_threads=args.threads, rows8=rows8)
                    f()
                    t0 = time.perf_counter()
                    f()
                    t += time.perf_counter() - t0
                times.setdefault((fmt, M), []).append(t)
    print(f"one 1.3B layer ({args.layout} layout), q8 activations, {args.threads} threads, median of {args.repeats} runs, "
          f"load average {os.getloadavg()[0]:.2f}, "
          f"kernels: {ops.current_isa()}")
    print("| format | M | ms | cost / M=1 | rows per M=1 cost | GMAC/s |\n|---|---:|---:|---:|---:|---:|")
    macs = sum(K * N for K, N in SHAPES)
    for fmt in fmts:
        base = statistics.median(times[fmt, Ms[0]])
        for M in Ms:
            t = statistics.median(times[fmt, M])
            print(f"| {fmt} | {M} | {t * 1e3:.2f} | {t / base:.2f}x | {M * base / t:.2f} | {M * macs / t / 1e9:.0f} |")


if __name__ == "__main__":
    main()
