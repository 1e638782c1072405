"""CUDA kernel microbenchmarks on one GPU: the quantized GEMV (decode rows) and the prefill matmul
(WMMA kernel vs bf16 operand + cuBLAS) against torch's bf16 F.linear on the same shapes, and the
device's copy bandwidth as the ceiling. Weights are rotated among enough copies to exceed the L2
several times (a GEMV over one resident copy would measure the cache). The calls are captured in
a CUDA graph and the graph's replays timed with CUDA events (so the host's launch overhead, which
a decode step under graphs does not pay, stays out); medians of --repeats.

    python benchmarks/bench_cuda_kernels.py [--out FILE]

Prints markdown tables (--out appends them)."""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mpt_lite.kernels import quant_ops  # noqa: E402

GEMV_SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (8192, 8192),  # 7B-class
               (6144, 2048), (2048, 2048), (8192, 2048), (2048, 8192), (50432, 2048)]  # synthetic 1.3B
PREFILL_SHAPES = [(6144, 2048), (8192, 2048), (2048, 8192), (4096, 4096)]


def timed(fn, iters: int, repeats: int) -> float:
    """Median seconds per call: `iters` calls fn(0..iters-1) captured in one CUDA graph, the graph
    replayed `repeats` times (after a warm-up outside the capture)."""
    for i in range(3):
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(iters):
            fn(i)
    graph.replay()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / iters)
    del graph
    return statistics.median(times)


def copy_bandwidth(repeats: int) -> float:
    """Bytes read + written per second by a 1 GiB device-to-device copy."""
    src = torch.randn(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    t = timed(lambda i: dst.copy_(src), 10, repeats)
    return 2 * src.numel() * 4 / t


def copies_for(nbytes: int) -> int:
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 << 20)
    return max(2, -(-4 * l2 // max(1, nbytes)))


def quantized(fmt: str, w: torch.Tensor):
    """(matmul(x, i) over copy i % n, bytes of one copy) for a weight w [N, K] on the GPU."""
    N, K = w.shape
    if fmt == "int8":
        q = quant_ops.quantize_int8(w)
        mm = lambda x, t, b=None: quant_ops.matmul_int8(x, *t)  # noqa: E731
    elif fmt == "nf4":
        q = quant_ops.quantize_nf4(w)
        mm = lambda x, t, b=None: quant_ops.matmul_nf4(x, *t, (N, K))  # noqa: E731
    else:
        q = quant_ops.quantize_int4(w)
        mm = lambda x, t, b=None: quant_ops.matmul_int4(x, *t, K)  # noqa: E731
    nbytes = sum(t.numel() * t.element_size() for t in q)
    n = copies_for(nbytes)
    qs = [q] + [tuple(t.clone() for t in q) for _ in range(n - 1)]
    return (lambda x, i: mm(x, qs[i % n])), nbytes


def bf16_linear(w: torch.Tensor):
    wb = w.to(torch.bfloat16)
    n = copies_for(wb.numel() * 2)
    ws = [wb] + [wb.clone() for _ in range(n - 1)]
    return (lambda x, i: F.linear(x, ws[i % n])), wb.numel() * 2


def gemv_table(args, bw: float) -> list[str]:
    rows = ["| shape N x K | M | int8 GB/s | nf4 GB/s | int4 GB/s | torch bf16 GB/s | nf4 us | int4 us | bf16 us "
            "| best 4-bit / copy bw |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for N, K in GEMV_SHAPES:
        w = torch.randn(N, K, device="cuda") * 0.02
        fns = {fmt: quantized(fmt, w) for fmt in ("int8", "nf4", "int4")}
        fns["bf16"] = bf16_linear(w)
        for M in args.rows:
            x = torch.randn(M, K, device="cuda")
            xb = x.to(torch.bfloat16)
            res = {}
            for name, (fn, nbytes) in fns.items():
                xx = xb if name == "bf16" else x
                t = timed(lambda i: fn(xx, i), args.iters, args.repeats)
                res[name] = (t, nbytes / t / 1e9)
            best = max(res["nf4"][1], res["int4"][1]) * 1e9 / bw
            rows.append(f"| {N} x {K} | {M} | {res['int8'][1]:.0f} | {res['nf4'][1]:.0f} | {res['int4'][1]:.0f} | "
                        f"{res['bf16'][1]:.0f} | {res['nf4'][0] * 1e6:.1f} | {res['int4'][0] * 1e6:.1f} | "
                        f"{res['bf16'][0] * 1e6:.1f} | {best:.0%} |")
            print(rows[-1], flush=True)
        del fns, w
        torch.cuda.empty_cache()
    return rows


def prefill_table(args) -> list[str]:
    rows = ["| shape N x K | M | fmt | WMMA kernel us | bf16 operand + cuBLAS us | torch bf16 linear us |",
            "| --- | ---: | --- | ---: | ---: | ---: |"]
    saved = quant_ops.CUDA_CUBLAS_MIN_M
    try:
        for N, K in PREFILL_SHAPES:
            w = torch.randn(N, K, device="cuda") * 0.02
            lin, _ = bf16_linear(w)
            for fmt in ("nf4", "int4", "int8"):
                fn, _ = quantized(fmt, w)
                for M in args.prefill_rows:
                    x = torch.randn(M, K, device="cuda")
                    out = []
                    for switch in (1 << 30, 0):
                        quant_ops.CUDA_CUBLAS_MIN_M = switch
                        out.append(timed(lambda i: fn(x, i), max(3, args.iters // 5), args.repeats))
                    tb = timed(lambda i: lin(x.to(torch.bfloat16), i), max(3, args.iters // 5), args.repeats)
                    rows.append(f"| {N} x {K} | {M} | {fmt} | {out[0] * 1e6:.0f} | {out[1] * 1e6:.0f} | {tb * 1e6:.0f} |")
                    print(rows[-1], flush=True)
                del fn
            del w, lin
            torch.cuda.empty_cache()
    finally:
        quant_ops.CUDA_CUBLAS_MIN_M = saved
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prefill-rows", type=int, nargs="+", default=[16, 64, 512])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda_kernels.py needs a CUDA GPU visible to torch")
    torch.manual_seed(0)
    bw = copy_bandwidth(args.repeats)
    head = [f"GPU: {torch.cuda.get_device_name(0)}; copy bandwidth {bw / 1e9:.0f} GB/s (read + write, 1 GiB); "
            f"GEMV GB/s = bytes of codes + scales (bf16: of the weight) per second", ""]
    print("\n".join(head), flush=True)
    table = head + gemv_table(args, bw) + [""] + prefill_table(args)
    text = "\n".join(table)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n\n")


if __name__ == "__main__":
    main()
