"""forward() of a prompt on a quantized model: the native plan (runtime/native_forward.py) against
the per-op path (MPT_LITE_NATIVE_STEP=0), and the engine's first step (generate()'s time to first
token) beside them; alternating in one process, medians. The logits of both forward paths are compared
too (max |difference| over max |logit|). --loop N also times a transformers-style decode loop: the
prompt with use_cache=True, then N greedy tokens one call each with the returned past_key_values.

    python benchmarks/bench_forward_native.py /tmp/mpt_lite_bench/ckpt-1.3b --formats int4 --repeats 7
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import write_checkpoint  # noqa: E402

from mpt_lite import Engine, MptForCausalLM, ops  # noqa: E402


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="synthetic checkpoint folder (written when missing)")
    ap.add_argument("--size", default="1.3b")
    ap.add_argument("--formats", nargs="+", default=["int4"], choices=["int4", "nf4", "int8"])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--loop", type=int, default=0, help="decode steps of the past_key_values loop (0: none)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ops.set_num_threads(args.threads)
    write_checkpoint(args.folder, args.size)
    ids = torch.randint(0, 50000, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
    n = ids.numel()
    print(f"{args.size}, {args.batch} x {args.tokens}-token prompt, threads={args.threads}, isa={ops.current_isa()}, "
          f"median of {args.repeats} alternating runs, load {os.getloadavg()[0]:.1f}")
    for fmt in args.formats:
        model = MptForCausalLM.from_pretrained(args.folder, bits=8 if fmt == "int8" else 4,
                                               quant_type=None if fmt == "int8" else fmt).eval()
        engine = Engine(model, max_bytes=1 << 30, max_batch_tokens=n, prefix_caching=False)

        def forward(native: bool, keep: int):
            os.environ["MPT_LITE_NATIVE_STEP"] = "1" if native else "0"
            with torch.inference_mode():
                return model(ids, logits_to_keep=keep).logits

        def first_token():
            os.environ["MPT_LITE_NATIVE_STEP"] = "1"
            for row in ids:
                engine.add_request(row, 1)
            with torch.inference_mode():
                return engine.step()

        def loop(native: bool):
            os.environ["MPT_LITE_NATIVE_STEP"] = "1" if native else "0"
            with torch.inference_mode():
                out = model(ids, use_cache=True, logits_to_keep=1)
                t = time.perf_counter()
                for _ in range(args.loop):
                    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                    out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
                return out.logits, time.perf_counter() - t

        runs = {("native", 1): lambda: forward(True, 1), ("per-op", 1): lambda: forward(False, 1),
                ("native", 0): lambda: forward(True, 0), ("per-op", 0): lambda: forward(False, 0),
                ("engine", 1): first_token}
        if args.loop:
            runs.update({("native", "loop"): lambda: loop(True), ("per-op", "loop"): lambda: loop(False)})
        times: dict = {k: [] for k in runs}
        outs: dict = {}
        for k, fn in runs.items():  # warm-up
            fn()
        for _ in range(args.repeats):
            for k, fn in runs.items():
                t, outs[k] = timed(fn)
                if k[1] == "loop":  # the decode steps alone
                    outs[k], t = outs[k]
                times[k].append(t)
        for keep in (1, 0):
            a, b = outs[("native", keep)], outs[("per-op", keep)]
            diff = ((a - b).abs().max() / b.abs().max()).item()
            med = {p: statistics.median(times[(p, keep)]) for p in ("native", "per-op")}
            print(f"{fmt:>5} logits_to_keep={keep}: native {n / med['native']:7.1f} tok/s, per-op "
                  f"{n / med['per-op']:7.1f} tok/s, {med['per-op'] / med['native']:.2f}x; logits differ by {diff:.1e}"
                  f" (runs: native {' '.join(f'{n / t:.0f}' for t in times[('native', keep)])}; per-op "
                  f"{' '.join(f'{n / t:.0f}' for t in times[('per-op', keep)])})", flush=True)
        if args.loop:
            a, b = outs[("native", "loop")], outs[("per-op", "loop")]
            diff = ((a - b).abs().max() / b.abs().max()).item()
            med = {p: statistics.median(times[(p, "loop")]) for p in ("native", "per-op")}
            steps = args.loop * args.batch
            print(f"{fmt:>5} past_key_values loop, {args.loop} steps: native {steps / med['native']:6.1f} tok/s, per-op "
                  f"{steps / med['per-op']:6.1f} tok/s, {med['per-op'] / med['native']:.2f}x; last logits differ by "
                  f"{diff:.1e}", flush=True)
        e = statistics.median(times[("engine", 1)])
        print(f"{fmt:>5} engine first step: {n / e:7.1f} tok/s (runs: "
              f"{' '.join(f'{n / t:.0f}' for t in times[('engine', 1)])})", flush=True)
        os.environ.pop("MPT_LITE_NATIVE_STEP", None)
        del model, engine


if __name__ == "__main__":
    main()
