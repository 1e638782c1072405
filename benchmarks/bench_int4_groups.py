"""Decode matmuls of int4 at group_size 32, 64 and 128 (4.5, 4.25, 4.125 bits per weight) from memory: the
synthetic-1.3B layers' four Linears in the rows8 layout (as load() holds them where the kernels read it), as
many layers per group size as `--layers` (1.1 GB of weights each at 40), q8 activations, the group sizes
interleaved pass by pass so that a noisy machine slows them alike; ms per layer (median and min) and the ratio
to groups of 32. Random codes and scales (the kernels' speed does not depend on the values).

    python benchmarks/bench_int4_groups.py [--layers 40] [--rows 1] [--repeats 25] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mpt_lite import ops

SHAPES = [(2048, 6144), (2048, 2048), (2048, 8192), (8192, 2048)]  # (in, out) of one 1.3B layer
GROUPS = (32, 64, 128)


def layer(group: int, g: torch.Generator) -> list[tuple]:
    out = []
    for K, N in SHAPES:
        packed = torch.randint(0, 256, (N, ops.int4_groups(K) * 16), dtype=torch.uint8, generator=g)
        scales = (torch.rand(N, ops.int4_groups(K, group), generator=g) * 0.01).half()
        out.append((K, ops.int4_to_rows8(packed, scales, K)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    ops.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    weights = {grp: [layer(grp, g) for _ in range(args.layers)] for grp in GROUPS}
    xs = {K: torch.randn(args.rows, K) for K, _ in SHAPES}

    def ms_per_layer(grp: int) -> float:
        t = time.perf_counter()
        for lay in weights[grp]:
            for K, (p, s) in lay:
                ops.matmul_int4(xs[K], p, s, K, q8=True, rows8=True)
        return (time.perf_counter() - t) / args.layers * 1e3

    for grp in GROUPS:  # warm-up
        ms_per_layer(grp)
    times = {grp: [] for grp in GROUPS}
    for _ in range(args.repeats):
        for grp in GROUPS:
            times[grp].append(ms_per_layer(grp))
    print(f"1.3B layers x {args.layers} per group size, M = {args.rows}, {args.threads} threads, kernels: "
          f"{ops.current_isa()}, {args.repeats} interleaved passes")
    print("| group_size | bits/weight | MB a layer | ms a layer (median) | min | GB/s at the median | speed vs 32 "
          "(median) | (min) |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    base_med, base_min = statistics.median(times[32]), min(times[32])
    for grp in GROUPS:
        nbytes = sum(p.numel() + 2 * s.numel() for _, (p, s) in weights[grp][0])
        med, low = statistics.median(times[grp]), min(times[grp])
        print(f"| {grp} | {4 + 16 / grp:.3f} | {nbytes / 1e6:.2f} | {med:.3f} | {low:.3f} | {nbytes / med / 1e6:.1f} "
              f"| {base_med / med:.2f}x | {base_min / low:.2f}x |")


if __name__ == "__main__":
    main()
