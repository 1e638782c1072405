"""One decode attention call alone: `ops.paged_attention_decode` for one sequence of `--contexts`
tokens (the 1.3B's 16 heads x 128 by default) per KV dtype, on `--threads` threads, in this process.
The blocks of the cache are shuffled as an engine's are. CPU milliseconds per call (process time,
which a loaded machine disturbs less than wall time), minimum and median of `--repeats` rounds of
`--calls` calls, and the K/V bytes read per CPU-second at the minimum.

A context whose K/V fit in the last-level cache (2048 tokens: 8 MB int8, 17 MB bf16) measures the
kernel's compute; one well beyond it (16384: 67 / 134 MB) how it reads from memory, as in an
engine's step, where every layer's cache is read once per token.

    python benchmarks/bench_attention_kernel.py                          # contexts 2048 16384, int8 and bf16
    python benchmarks/bench_attention_kernel.py --contexts 2048 --kv-dtypes int8 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mpt_lite import ops
from mpt_lite.model.layers import alibi_slopes

KV_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8, "int4": torch.uint8}


def filled_cache(ctx: int, kv_heads: int, head_dim: int, dtype: torch.dtype, block_size: int = 16):
    """K/V of one ctx-token sequence in shuffled blocks: (k, v, k_scale, v_scale), block table."""
    g = torch.Generator().manual_seed(0)
    nblocks = (ctx + block_size - 1) // block_size
    shape, scale_shape = ops.cache_shapes(nblocks + 1, block_size, kv_heads, head_dim, dtype)
    k, v = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    scales = [None, None] if scale_shape is None else [torch.zeros(scale_shape), torch.zeros(scale_shape)]
    table = torch.randperm(nblocks + 1, generator=g)[:nblocks].to(torch.int32)
    pos = torch.arange(ctx)
    slots = table[pos // block_size].long() * block_size + pos % block_size
    for t0 in range(0, ctx, 4096):  # in slices: a long context's float K/V would not fit at once
        sl = slots[t0:t0 + 4096]
        ops.write_kv_cache(torch.randn(len(sl), kv_heads, head_dim, generator=g),
                           torch.randn(len(sl), kv_heads, head_dim, generator=g), k, v, sl, *scales)
    return (k, v, *scales), table[None]


def cpu_ms_per_call(call, repeats: int, calls: int = 1) -> list[float]:
    """CPU milliseconds per call (process time: a loaded machine disturbs it less than wall time), one value
    for each of `repeats` rounds of `calls` calls, after one call to warm up."""
    call()
    times = []
    for _ in range(repeats):
        t = time.process_time()
        for _ in range(calls):
            call()
        times.append((time.process_time() - t) / calls * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[2048, 16384])
    ap.add_argument("--kv-dtypes", nargs="+", default=["int8", "bfloat16"], choices=list(KV_DTYPES))
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--calls", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.heads} heads x {args.head_dim}, one sequence, {args.threads} thread(s); CPU ms per call")
    print("| KV dtype | context | min ms | median ms | GB/s at min |\n|---|---:|---:|---:|---:|")
    slopes = alibi_slopes(args.heads)
    for name in args.kv_dtypes:
        for ctx in args.contexts:
            cache, table = filled_cache(ctx, args.heads, args.head_dim, KV_DTYPES[name])
            q = torch.randn(1, args.heads, args.head_dim)
            lens = torch.tensor([ctx], dtype=torch.int32)

            def call():
                ops.paged_attention_decode(q, cache[0], cache[1], table, lens, args.head_dim ** -0.5, slopes,
                                           *cache[2:], num_threads=args.threads)

            times = cpu_ms_per_call(call, args.repeats, args.calls)
            nbytes = ctx * sum(t[0, 0].numel() * t.element_size() for t in cache if t is not None)  # K, V, scales
            best = min(times)
            print(f"| {name} | {ctx} | {best:.3f} | {statistics.median(times):.3f} | {nbytes / best / 1e6:.1f} |",
                  flush=True)
            del cache


if __name__ == "__main__":
    main()
