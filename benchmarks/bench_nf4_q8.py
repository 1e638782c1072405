"""nf4's integer path (q8 activations x NF4 codes held as 7-bit integers, llama.cpp's IQ4_NL scheme) against
float-activation nf4: quality on the embedded default model and speed against int4.

    python benchmarks/bench_nf4_q8.py quality            # cosine of logits, held-out perplexity
    python benchmarks/bench_nf4_q8.py matmul --threads 2 # decode matmuls, 1.3B shapes, nf4 / int4

quality: the default model loaded with nf4 blocks (embedding int8), scored twice on the same
held-out windows (scripts/eval_default_model.py's): every nf4 matmul forced onto the integer path
(q8=True, at every row count, so prefill-sized batches measure what decode computes) and forced
onto float activations (q8=False). Prints the cosine of the logits (all positions flattened, and
the worst position) and both perplexities.
matmul: y = x @ W^T at M = 1 on the 1.3B decode shapes, nf4 (integer path, float path) and int4
(q8), runs alternated in one process, weights out of cache (a 256 MB buffer is read between runs),
medians and ratios."""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

from mpt_lite import kernels  # noqa: E402


@contextlib.contextmanager
def nf4_q8(on: bool):
    """Every nf4 matmul (mpt_lite.quant calls kernels.matmul_nf4) with q8 forced on or off."""
    real = kernels.matmul_nf4
    kernels.matmul_nf4 = lambda *a, **kw: real(*a, **{**kw, "q8": on})
    try:
        yield
    finally:
        kernels.matmul_nf4 = real


def quality(args) -> None:
    import math

    import torch.nn.functional as F

    import eval_default_model as ev
    import mpt_lite

    model_dir = ROOT / "mpt_lite" / "default_model"
    stream, seq_len, n_files = ev.held_out(model_dir, args.max_tokens)
    model = mpt_lite.load(model_dir, bits=4, quant_type="nf4")
    n_windows = len(stream) // seq_len
    data = torch.tensor(stream[: n_windows * seq_len]).view(n_windows, seq_len)
    loss = {True: 0.0, False: 0.0}
    dot = na = nb = 0.0
    worst, count = 1.0, 0
    with torch.inference_mode():
        for i in range(0, n_windows, 16):
            x = data[i:i + 16]
            out = {}
            for on in (True, False):
                with nf4_q8(on):
                    out[on] = model(input_ids=x).logits.double()
                loss[on] += float(F.cross_entropy(out[on][:, :-1].reshape(-1, out[on].shape[-1]),
                                                  x[:, 1:].reshape(-1), reduction="sum"))
            a, b = out[True].reshape(-1), out[False].reshape(-1)
            dot, na, nb = dot + float(a @ b), na + float(a @ a), nb + float(b @ b)
            worst = min(worst, F.cosine_similarity(out[True], out[False], dim=-1).min().item())
            count += x[:, 1:].numel()
    ppl = {on: math.exp(loss[on] / count) for on in loss}
    print(f"default model, nf4 blocks (embedding int8), {n_files} held-out files, {count:,} scored tokens, "
          f"windows of {seq_len}")
    print(f"cosine of logits, integer path vs float activations: {dot / math.sqrt(na * nb):.6f} "
          f"(all positions); worst position {worst:.6f}")
    print(f"held-out perplexity: float activations {ppl[False]:.4f}, integer path {ppl[True]:.4f} "
          f"({100 * (ppl[True] / ppl[False] - 1):+.3f}%)")


def matmul(args) -> None:
    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)
    flush = torch.ones(64 << 20)
    shapes = [(6144, 2048), (2048, 2048), (8192, 2048), (2048, 8192)]  # (N, K): Wqkv, out_proj, up, down
    g = torch.Generator().manual_seed(0)
    print(f"M = 1, {args.threads} threads, kernels {kernels.current_isa()}, median of {args.rounds} alternated runs, "
          f"weights out of cache")
    print("| shape [N, K] | int4 q8 us | nf4 integer us | nf4 float us | nf4 integer / int4 (speed) | "
          "nf4 float / int4 (speed) |\n|---|---:|---:|---:|---:|---:|")
    total = {"int4": 0.0, "nf4 q8": 0.0, "nf4 float": 0.0}
    for N, K in shapes:
        w = torch.randn(N, K, generator=g) * 0.02
        x = torch.randn(1, K, generator=g)
        p4, s4 = kernels.quantize_int4(w)
        pn, an = kernels.quantize_nf4(w)
        fns = {"int4": lambda: kernels.matmul_int4(x, p4, s4, K),
               "nf4 q8": lambda: kernels.matmul_nf4(x, pn, an, (N, K), q8=True),
               "nf4 float": lambda: kernels.matmul_nf4(x, pn, an, (N, K), q8=False)}
        times = {k: [] for k in fns}
        for fn in fns.values():
            fn()
        for _ in range(args.rounds):
            for k, fn in fns.items():
                flush.sum()
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        for k in total:
            total[k] += med[k]
        print(f"| [{N}, {K}] | {1e6 * med['int4']:.0f} | {1e6 * med['nf4 q8']:.0f} | {1e6 * med['nf4 float']:.0f} | "
              f"{med['int4'] / med['nf4 q8']:.2f}x | {med['int4'] / med['nf4 float']:.2f}x |")
    print(f"| all four | {1e6 * total['int4']:.0f} | {1e6 * total['nf4 q8']:.0f} | {1e6 * total['nf4 float']:.0f} | "
          f"{total['int4'] / total['nf4 q8']:.2f}x | {total['int4'] / total['nf4 float']:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["quality", "matmul"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--max-tokens", type=int, default=None, help="quality: score at most this many held-out tokens")
    args = ap.parse_args()
    quality(args) if args.what == "quality" else matmul(args)


if __name__ == "__main__":
    main()
