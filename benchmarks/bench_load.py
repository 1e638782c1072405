"""Seconds that from_pretrained takes to load and quantize a hub checkpoint, per format, each in a fresh
process (nothing cached between formats but the OS page cache of the checkpoint's files), medians.

    python benchmarks/bench_load.py /tmp/mpt_lite_bench/ckpt-1.3b --formats int4 nf4 int8 --repeats 2
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CHILD = """
import sys, time
import torch
from mpt_lite import MptForCausalLM
fmt = sys.argv[2]
t = time.perf_counter()
MptForCausalLM.from_pretrained(sys.argv[1], bits=8 if fmt == "int8" else 4, quant_type=None if fmt == "int8" else fmt)
print(time.perf_counter() - t)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--formats", nargs="+", default=["int4", "nf4", "int8"], choices=["int4", "nf4", "int8"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    times: dict[str, list[float]] = {f: [] for f in args.formats}
    for _ in range(args.repeats):
        for fmt in args.formats:
            out = subprocess.run([sys.executable, "-c", CHILD, args.checkpoint, fmt], check=True, capture_output=True,
                                 text=True).stdout
            times[fmt].append(float(out.strip().splitlines()[-1]))
    for fmt, ts in times.items():
        print(f"{fmt:>5}: load {statistics.median(ts):6.2f} s (runs: {' '.join(f'{t:.2f}' for t in ts)})")


if __name__ == "__main__":
    main()
