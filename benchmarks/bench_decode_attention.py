"""The CPU decode attention kernel alone, at the synthetic 1.3B's shape (16 heads x head_dim 128, ALiBi):
one query per layer over `--ctx` cached tokens in each of `--layers` separate caches (24: every layer of
the 1.3B, 201 MB of int8 K/V at 2048 tokens, far more than the last-level cache), timed per token (all
layers), with the K/V bytes read per second beside the machine's read bandwidth measured in the same run.

    python benchmarks/bench_decode_attention.py                       # int8 KV, 2048 tokens, 24 layers
    python benchmarks/bench_decode_attention.py --kv-dtype bfloat16 --ctx 8192 --layers 4
    python benchmarks/bench_decode_attention.py --layers 1            # one layer: from cache

The machine is shared, so both the minimum (the least disturbed token) and the median of --rounds
tokens are printed; compare builds by running this alternately, never across sessions."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

KV_DTYPES = {"int8": torch.int8, "int4": torch.uint8, "bfloat16": torch.bfloat16, "float32": torch.float32}


def caches(layers: int, ctx: int, dtype: torch.dtype, heads: int, head_dim: int, block: int, shuffle: bool):
    from mpt_lite.kernels import cache_shapes

    g = torch.Generator().manual_seed(0)
    blocks = ctx // block + 2
    shape, scale_shape = cache_shapes(blocks, block, heads, head_dim, dtype)
    out = []
    for _ in range(layers):
        if dtype == torch.int8:
            k, v = (torch.randint(-127, 128, shape, dtype=torch.int8, generator=g) for _ in range(2))
            ks, vs = (torch.rand(scale_shape, generator=g) * 0.01 for _ in range(2))
        elif dtype == torch.uint8:  # 4-bit: two codes a byte
            k, v = (torch.randint(0, 256, shape, dtype=torch.uint8, generator=g) for _ in range(2))
            ks, vs = (torch.rand(scale_shape, generator=g) * 0.1 for _ in range(2))
        else:
            k, v = (torch.randn(shape, generator=g).to(dtype) for _ in range(2))
            ks = vs = None
        out.append((k, v, ks, vs))
    n = (ctx + block - 1) // block
    order = torch.randperm(blocks, generator=g)[:n] if shuffle else torch.arange(n)
    return out, order.to(torch.int32)[None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctx", type=int, default=2048, help="cached tokens")
    ap.add_argument("--layers", type=int, default=24, help="separate caches read per token")
    ap.add_argument("--kv-dtype", default="int8", choices=list(KV_DTYPES))
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--shuffle", action="store_true", help="blocks in random order (a long-running cache)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30, help="timed tokens")
    args = ap.parse_args()
    if args.ctx < 1 or args.layers < 1 or args.rounds < 1:
        ap.error("--ctx, --layers and --rounds must be >= 1")

    from mpt_lite import kernels
    from mpt_lite.kernels.attention_ops import paged_attention_decode
    from mpt_lite.kernels.bandwidth import read_bandwidth
    from mpt_lite.model.layers import alibi_slopes

    dtype = KV_DTYPES[args.kv_dtype]
    layers, table = caches(args.layers, args.ctx, dtype, args.heads, args.head_dim, args.block_size, args.shuffle)
    lens = torch.tensor([args.ctx], dtype=torch.int32)
    q = torch.randn(1, args.heads, args.head_dim, generator=torch.Generator().manual_seed(1))
    slopes = alibi_slopes(args.heads).float()
    scale = args.head_dim ** -0.5

    def token():
        for k, v, ks, vs in layers:
            paged_attention_decode(q, k, v, table, lens, scale, slopes, ks, vs, num_threads=args.threads)

    token()
    times = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        token()
        times.append(time.perf_counter() - t)
    slots = layers[0][0].shape[0] * args.block_size
    per_slot = sum(t.numel() * t.element_size() for t in layers[0] if t is not None) / slots  # K, V and scales
    kv_bytes = args.layers * args.ctx * per_slot
    bw = read_bandwidth(num_threads=args.threads)["gb_s"]
    lo, med = min(times), statistics.median(times)
    print(f"decode attention, {args.kv_dtype} KV, {args.ctx} tokens, {args.layers} layers x {args.heads} heads x "
          f"{args.head_dim}, {args.threads} threads, kernels: {kernels.current_isa()}")
    print(f"per token: min {lo * 1e3:.2f} ms, median {med * 1e3:.2f} ms of {args.rounds}; "
          f"K/V {kv_bytes / 1e6:.0f} MB at {kv_bytes / lo / 1e9:.1f} GB/s (min); read loop {bw:.1f} GB/s")


if __name__ == "__main__":
    main()
