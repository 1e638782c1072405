"""One prefill attention call alone: `ops.paged_attention_prefill` for a prompt of `--tokens` tokens (the
1.3B's 16 heads x 128 by default, ALiBi) whose K/V are already in a paged cache of `--kv-dtypes`, on
`--threads` threads, in this process. CPU milliseconds per call (process time), minimum and median of
`--repeats` calls, and the attention's multiply-adds per CPU-second at the minimum (a causal prompt of T
tokens: about T^2 / 2 x heads x head_dim x 2 multiply-adds, scores and values).

This is the part of a long prompt's prefill that grows with the square of its length: 25% of a 2,000-token
prefill of the 1.3B before the tile kernel (docs/benchmarks.md).

    python benchmarks/bench_prefill_attention.py                        # 512 and 2000 tokens, float32 and int8
    python benchmarks/bench_prefill_attention.py --tokens 2000 --kv-dtypes int8 --threads 2
"""
from __future__ import annotations

import argparse
import statistics

import torch

from bench_attention_kernel import KV_DTYPES, cpu_ms_per_call, filled_cache
from mpt_lite import ops
from mpt_lite.model.layers import alibi_slopes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 2000])
    ap.add_argument("--kv-dtypes", nargs="+", default=["float32", "int8"], choices=list(KV_DTYPES))
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.heads} heads x {args.head_dim}, one prompt, {args.threads} thread(s); CPU ms per call")
    print("| KV dtype | tokens | min ms | median ms | GMAC/s at min |\n|---|---:|---:|---:|---:|")
    slopes = alibi_slopes(args.heads)
    g = torch.Generator().manual_seed(1)
    for name in args.kv_dtypes:
        for T in args.tokens:
            cache, table = filled_cache(T, args.heads, args.head_dim, KV_DTYPES[name])
            q = torch.randn(T, args.heads, args.head_dim, generator=g)
            lens = torch.tensor([T], dtype=torch.int32)
            qsl = torch.tensor([0, T], dtype=torch.int32)

            def call():
                ops.paged_attention_prefill(q, cache[0], cache[1], table, lens, qsl, args.head_dim ** -0.5, slopes,
                                            *cache[2:], num_threads=args.threads)

            times = cpu_ms_per_call(call, args.repeats)
            macs = T * (T + 1) / 2 * args.heads * args.head_dim * 2
            best = min(times)
            print(f"| {name} | {T} | {best:.2f} | {statistics.median(times):.2f} | {macs / best / 1e6:.1f} |",
                  flush=True)
            del cache


if __name__ == "__main__":
    main()
