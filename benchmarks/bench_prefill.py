"""512-token prefill on a synthetic checkpoint (benchmarks/synthetic.py): float activations above
16 rows (the float-decoding GEMM), the q8 integer GEMM tiles (layouts.use_q8: q8 up to Q8_MAX_ROWS = 16
rows and, from Q8_GEMM_MIN_K in_features on, at any row count), and, where the CPU has AMX, the shipped
choice (those many-row q8 matmuls as bf16 operands on the AMX tiles), alternating in one process,
medians. Two measures: forward() of the whole prompt (logits of the last token) and the engine's first
step (prefill and the first token: generate()'s time to first token).

    python benchmarks/bench_prefill.py /tmp/mpt-1.3b --formats int4 nf4 int8 --repeats 3
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
from mpt_lite.kernels import decode_step, layouts  # noqa: E402

DEFAULT = (layouts.Q8_MAX_ROWS, layouts.Q8_GEMM_MIN_K)
# (Q8_MAX_ROWS, Q8_GEMM_MIN_K, AMX tiles on) of each path; "shipped" takes the AMX tiles where the CPU has them
PATHS = {"float>16": (16, 2**31 - 1, False), "q8 tiles": (*DEFAULT, False)}
if ops.amx_supported():
    PATHS["shipped (amx)"] = (*DEFAULT, True)


def use_path(name: str) -> None:  # read per call (layouts) / per engine plan (decode_step) / per call (AMX)
    layouts.Q8_MAX_ROWS = decode_step.Q8_MAX_ROWS = PATHS[name][0]
    layouts.Q8_GEMM_MIN_K = decode_step.Q8_GEMM_MIN_K = PATHS[name][1]
    ops.set_amx(PATHS[name][2])


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="synthetic checkpoint folder (written when missing)")
    ap.add_argument("--size", default="1.3b")
    ap.add_argument("--formats", nargs="+", default=["int4", "nf4", "int8"], choices=["int4", "nf4", "int8"])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ops.set_num_threads(args.threads)
    write_checkpoint(args.folder, args.size)
    ids = torch.randint(0, 50000, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    print(f"{args.size}, {args.tokens}-token prompt, threads={args.threads}, isa={ops.current_isa()}, "
          f"median of {args.repeats} alternating runs, load {os.getloadavg()[0]:.1f}")
    print(f"{'format':>6} {'measure':>10} | " + " | ".join(f"{p:>14}" for p in PATHS) + " | speed-up over float>16")
    for fmt in args.formats:
        model = MptForCausalLM.from_pretrained(args.folder, bits=8 if fmt == "int8" else 4,
                                               quant_type=None if fmt == "int8" else fmt)

        def forward():
            with torch.inference_mode():
                model(ids, logits_to_keep=1)

        def first_token():
            engine = Engine(model, max_bytes=1 << 30, max_batch_tokens=args.tokens, prefix_caching=False)
            engine.add_request(ids[0], 1)
            return timed(engine.step)

        times = {(m, p): [] for m in ("forward", "ttft") for p in PATHS}
        for p in PATHS:  # warm-up
            use_path(p)
            forward()
        for _ in range(args.repeats):
            for p in PATHS:
                use_path(p)
                times[("forward", p)].append(timed(forward))
                times[("ttft", p)].append(first_token())
        for m in ("forward", "ttft"):
            med = [statistics.median(times[(m, p)]) for p in PATHS]
            cells = " | ".join(f"{args.tokens / t:8.1f} tok/s" for t in med)
            print(f"{fmt:>6} {m:>10} | {cells} | " + " ".join(f"{med[0] / t:.2f}x" for t in med[1:]), flush=True)
        use_path(list(PATHS)[-1])
        del model


if __name__ == "__main__":
    main()
