"""The CPU kernel thread pool on an idle and on an oversubscribed machine, side by side in one run.

    python benchmarks/bench_pool_load.py                  # default model, 128 tokens, 3 busy loops
    python benchmarks/bench_pool_load.py --busy 3 --repeats 5 --new 128

Loads the embedded default model (mpt_lite.load()), then for each load condition (idle: no busy
loops of ours; loaded: --busy processes spinning `while True: pass`, started and stopped by this
script) and each thread count (model.num_threads = 1, 2, ...) times greedy generation of --new
tokens from "def fibonacci(n):" (the CLI's example) and a micro benchmark of back-to-back small
kernel calls (matmul_int4, M=1, 512 -> 512: the per-call overhead the native step pays dozens of
times per token). Runs are interleaved (condition, then threads, then repeat) and medians of
--repeats are reported. Other processes on the machine add to both conditions; the load average is
printed with the table."""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

PROMPT = "def fibonacci(n):"


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def gen_tok_s(model, ids: torch.Tensor, new: int) -> float:
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new)
    dt = time.perf_counter() - t
    return (out.shape[1] - ids.shape[1]) / dt


def calls_per_s(kernels, x, packed, scales, k: int, threads: int, seconds: float) -> float:
    n = 0
    t0 = time.perf_counter()
    while (t := time.perf_counter()) - t0 < seconds:
        for _ in range(50):
            kernels.matmul_int4(x, packed, scales, k, num_threads=threads)
        n += 50
    return n / (t - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busy", type=int, default=3, help="busy-loop processes in the loaded condition")
    ap.add_argument("--threads", default="1,2", help="thread counts to compare")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new", type=int, default=128, help="tokens generated per run")
    ap.add_argument("--micro-seconds", type=float, default=1.0, help="seconds per micro benchmark run")
    ap.add_argument("--out", help="append the markdown table to this file")
    args = ap.parse_args()

    import mpt_lite
    from mpt_lite import kernels

    model = mpt_lite.load()
    ids = torch.tensor([model.tokenizer.encode(PROMPT)])
    torch.manual_seed(0)
    k = n = 512
    packed, scales = kernels.quantize_int4(torch.randn(n, k))
    x = torch.randn(1, k)
    threads = [int(t) for t in args.threads.split(",")]
    pool = kernels.num_threads()
    model.generate(ids, max_new_tokens=8)  # warm up: plan, pages, pool

    res: dict[tuple[str, int], dict[str, list[float]]] = {}
    loads: dict[str, list[float]] = {"idle": [], "loaded": []}
    for r in range(args.repeats):
        for cond in ("idle", "loaded"):
            procs = busy_loops(args.busy) if cond == "loaded" else []
            try:
                time.sleep(0.3 if procs else 0.0)
                for t in threads:
                    model.num_threads = t
                    d = res.setdefault((cond, t), {"gen": [], "calls": []})
                    d["gen"].append(gen_tok_s(model, ids, args.new))
                    d["calls"].append(calls_per_s(kernels, x, packed, scales, k, t, args.micro_seconds))
                    print(f"  repeat {r} {cond:6s} threads={t}: {d['gen'][-1]:7.1f} tok/s, "
                          f"{d['calls'][-1]:8.0f} calls/s", file=sys.stderr, flush=True)
                loads[cond].append(os.getloadavg()[0])
            finally:
                stop(procs)
    model.num_threads = None

    med = {key: {m: statistics.median(v) for m, v in d.items()} for key, d in res.items()}
    lines = [f"pool size {pool}; {args.busy} busy-loop processes when loaded; {args.new} new tokens; "
             f"medians of {args.repeats}; 1-min load average at the end of each condition: idle "
             f"{statistics.median(loads['idle']):.1f}, loaded {statistics.median(loads['loaded']):.1f}",
             "",
             "| threads | generate idle (tok/s) | generate loaded (tok/s) | matmul_int4 512x512 idle (calls/s) "
             "| matmul_int4 loaded (calls/s) |",
             "|---|---|---|---|---|"]
    for t in threads:
        i, l = med[("idle", t)], med[("loaded", t)]
        lines.append(f"| {t} | {i['gen']:.1f} | {l['gen']:.1f} | {i['calls']:.0f} | {l['calls']:.0f} |")
    t1 = threads[0]
    for t in threads[1:]:
        lines.append("")
        lines.append(f"{t} threads / {t1} thread: generate idle "
                     f"{med[('idle', t)]['gen'] / med[('idle', t1)]['gen']:.2f}x, loaded "
                     f"{med[('loaded', t)]['gen'] / med[('loaded', t1)]['gen']:.2f}x; calls idle "
                     f"{med[('idle', t)]['calls'] / med[('idle', t1)]['calls']:.2f}x, loaded "
                     f"{med[('loaded', t)]['calls'] / med[('loaded', t1)]['calls']:.2f}x")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
