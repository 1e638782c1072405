"""Do the decode matmuls stream their weights at the machine's read bandwidth? Every Linear of the
synthetic-1.3B layers (Wqkv, out_proj, up, down) in int4 (row layout, and the rows8 layout that AVX2 and
AVX-512 machines without AMX-INT8 hold in memory), nf4 (bitsandbytes' layout and rows8) and int8 (row layout,
and rows8: AVX-512 without AMX-INT8), as many layers as make the
weights 2x the last-level cache (so they come from memory, as in decode), run at M = 1 (and 8) on
`--threads` threads; bytes/s of weights (codes + scales) against kernels.read_bandwidth over a buffer
of the same size, runs alternating (A B A B) in one process, medians. Random codes (the kernels'
speed does not depend on the values). On a shared machine the wall-clock rates fall with the load;
the `per CPU-second` columns divide the bytes by the process's CPU time over the threads instead
(the rate while the threads run; pool threads spinning between matmuls count as CPU time).

    python benchmarks/bench_gemv_bandwidth.py [--threads 2] [--repeats 7] [--rows 1,8]
        [--formats int4,int4_rows8,nf4,nf4_rows8,int8,int8_rows8]   (int4_rows8_g64 / _g128: group_size 64 / 128)
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from mpt_lite import kernels, ops

SHAPES = [(2048, 6144), (2048, 2048), (2048, 8192), (8192, 2048)]  # (in, out) of one 1.3B layer


def layer_weights(fmt: str, g: torch.Generator) -> list[tuple]:
    out = []
    for K, N in SHAPES:
        if fmt.startswith("int4"):  # random codes: the same bytes stand for either layout; _gNN: group_size NN
            group = int(fmt.rpartition("_g")[2]) if "_g" in fmt else 32
            q = (torch.randint(0, 256, (N, K // 32 * 16), dtype=torch.uint8, generator=g),
                 (torch.rand(N, K // group, generator=g) * 0.01).half())
        elif fmt.startswith("nf4"):
            q = (torch.randint(0, 256, (N * K // 2,), dtype=torch.uint8, generator=g),
                 torch.rand(N * K // 64, generator=g) + 0.5)
        else:  # random codes: the same bytes stand for either layout
            q = (torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g), torch.rand(N, generator=g) + 0.5)
        out.append((K, N, q))
    return out


def run(fmt: str, weights: list, M: int, threads: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one pass over every weight at M rows."""
    xs = [torch.randn(M, K) for K, _, _ in weights]
    c, t = time.process_time(), time.perf_counter()
    for x, (K, N, q) in zip(xs, weights):
        if fmt.startswith("int4"):
            ops.matmul_int4(x, *q, K, q8=True, num_threads=threads, rows8=fmt.startswith("int4_rows8"))
        elif fmt.startswith("nf4"):
            ops.matmul_nf4(x, *q, (N, K), q8=True, num_threads=threads, rows8=fmt == "nf4_rows8")
        else:
            ops.matmul_int8(x, *q, q8=True, num_threads=threads, rows8=fmt == "int8_rows8")
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rows", default="1,8")
    ap.add_argument("--formats", default="int4,int4_rows8,nf4,nf4_rows8,int8,int8_rows8")
    ap.add_argument("--cache-multiple", type=float, default=2.0, help="weights per format / last-level cache")
    args = ap.parse_args()
    Ms = [int(m) for m in args.rows.split(",")]
    llc = kernels.last_level_cache_bytes() or 32 << 20
    g = torch.Generator().manual_seed(0)
    print(f"1.3B layers, q8 activations, {args.threads} threads, median of {args.repeats} alternating runs, "
          f"kernels: {ops.current_isa()}, last-level cache {llc / 2**20:.0f} MiB, load average "
          f"{os.getloadavg()[0]:.2f} at the start")
    print("| format | M | layers | weight MiB | ms per pass | weights GB/s | read bw GB/s | fraction "
          "| weights GB per CPU-s | read GB per CPU-s | fraction |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for fmt in args.formats.split(","):
        one = layer_weights(fmt, g)
        per_layer = sum(t.numel() * t.element_size() for _, _, q in one for t in q)
        count = max(1, round(args.cache_multiple * llc / per_layer))
        layers = [one] + [layer_weights(fmt, g) for _ in range(count - 1)]
        weights = [w for layer in layers for w in layer]
        nbytes = per_layer * len(layers)
        for M in Ms:
            run(fmt, weights, M, args.threads)
            gemv, bw, gemv_cpu, bw_cpu = [], [], [], []
            for _ in range(args.repeats):
                wall, cpu = run(fmt, weights, M, args.threads)
                gemv.append(nbytes / wall / 1e9)
                gemv_cpu.append(nbytes * args.threads / cpu / 1e9)
                r = kernels.read_bandwidth(args.threads, nbytes, repeats=1)
                bw.append(r["gb_s"])
                bw_cpu.append(r["cpu_gb_s"])
            a, b = statistics.median(gemv), statistics.median(bw)
            ac, bc = statistics.median(gemv_cpu), statistics.median(bw_cpu)
            print(f"| {fmt} | {M} | {len(layers)} | {nbytes / 2**20:.0f} | {nbytes / a / 1e6:.1f} | {a:.1f} | {b:.1f} "
                  f"| {a / b:.0%} | {ac:.1f} | {bc:.1f} | {ac / bc:.0%} |", flush=True)
        del layers, weights
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
