"""Decode's weight read rate as a fraction of the machine's read bandwidth, both measured in the same moments.

On a shared host the read loop alone swings by 2x or more between runs, so a fraction of a decode run over a
loop run minutes apart means little. Here every timed decode step (engine.step(), batch 1 through the native
step, as `generate()` runs it) is paired with one timed pass of the plain vector read loop
(kernels.read_buffer_bandwidth) over a buffer of the same size as the weights one step reads, the order of the
two flipped each step. A round is `--steps` such pairs: its fraction is the weights' bytes per second over the
loop's. Several variants are loaded into the one process and take turns, round by round, so their ratios
(e.g. nf4 / int4) come out of the same phases too.

    python benchmarks/bench_read_fraction.py --checkpoint /tmp/mpt_lite_bench/ckpt-1.3b --variants int4,nf4,int8
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import MptLite  # noqa: E402


def loop_buffer(nbytes: int, huge: bool) -> torch.Tensor:
    """nbytes (rounded up to 64) of non-zero bytes, in transparent huge pages like the weights, or in 4 KiB."""
    from mpt_lite.kernels.huge_pages import HugePageArena, thp_available

    nbytes = -(-nbytes // 64) * 64
    src = torch.full((nbytes,), 7, dtype=torch.uint8)
    if not (huge and thp_available()):
        return src
    return HugePageArena(nbytes).copy(src)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--variants", default="int4,nf4,int8", help="comma-separated, as run_peer.py names them")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=16, help="decode steps (each paired with a read pass) a round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loop-pages", choices=["huge", "4k"], default="huge",
                    help="pages of the read loop's buffer (the loader puts the weights in huge pages by default)")
    args = ap.parse_args()

    from mpt_lite import kernels

    variants = [v for v in args.variants.split(",") if v]
    runners = {v: MptLite(args.checkpoint, v, args.threads) for v in variants}
    wbytes = {v: r.weight_bytes() for v, r in runners.items()}
    buffers = {v: loop_buffer(b, args.loop_pages == "huge") for v, b in wbytes.items()}
    print(f"{kernels.current_isa()}, {args.threads} threads, loop buffers in {args.loop_pages} pages; weights: "
          + ", ".join(f"{v} {b / 1e6:.0f} MB" for v, b in wbytes.items()), flush=True)

    prompt = list(range(5, 37))

    def read_pass(v: str) -> float:
        """Seconds of one timed pass of the read loop over v's buffer."""
        r = kernels.read_buffer_bandwidth(buffers[v], args.threads)
        return r["bytes"] / r["gb_s"] / 1e9

    def round_of(v: str) -> tuple[float, float]:
        """(weight GB/s, loop GB/s) over one round of paired steps and passes."""
        engine = runners[v]._engine(len(prompt))
        engine.add_request(prompt, args.steps + 1)
        step_s = loop_s = 0.0
        with torch.inference_mode():
            engine.step()  # the prompt and the first token, untimed
            for i in range(args.steps):
                if i % 2:
                    loop_s += read_pass(v)
                t0 = time.perf_counter()
                engine.step()
                step_s += time.perf_counter() - t0
                if not i % 2:
                    loop_s += read_pass(v)
        return wbytes[v] * args.steps / step_s / 1e9, buffers[v].numel() * args.steps / loop_s / 1e9

    for v in variants:  # warm: the pool, the KV pages, the buffer's page tables
        kernels.read_buffer_bandwidth(buffers[v], args.threads)
        round_of(v)
    res: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            res[v].append(round_of(v))
        print(f"round {r}: " + "  ".join(f"{v} {res[v][-1][0]:.1f}/{res[v][-1][1]:.1f} GB/s "
                                         f"({res[v][-1][0] / res[v][-1][1]:.0%})" for v in variants), flush=True)
    print("\nvariant   weights GB/s  loop GB/s  fraction: median (min-max)  tok/s")
    for v in variants:
        w, lp = zip(*res[v])
        fr = [a / b for a, b in res[v]]
        print(f"{v:9} {statistics.median(w):12.1f} {statistics.median(lp):10.1f}  "
              f"{statistics.median(fr):6.0%} ({min(fr):.0%}-{max(fr):.0%})       "
              f"{statistics.median(w) * 1e9 / wbytes[v]:.1f}")
    for v in variants[1:]:
        ratio = [(a[0] / wbytes[v]) / (b[0] / wbytes[variants[0]]) for a, b in zip(res[v], res[variants[0]])]
        print(f"tok/s {v} / {variants[0]} per round: median {statistics.median(ratio):.3f} "
              f"({min(ratio):.3f}-{max(ratio):.3f})")


if __name__ == "__main__":
    main()
