"""Decode's weight read rate as a fraction of the machine's read bandwidth, both measured in the same moments.

On a shared host the read loop alone swings by 2x or more between runs, so a fraction of a decode run over a
loop run minutes apart means little. Here every timed decode step (engine.step(), batch 1 through the native
step, as `generate()` runs it) is paired with one timed pass of the plain vector read loop
(kernels.read_buffer_bandwidth) over a buffer of the same size as the weights one step reads, the order of the
two flipped each step. A round is `--steps` such pairs: its fraction is the weights' bytes per second over the
loop's. Several variants are loaded into the one process and take turns, round by round, so their ratios
(e.g. nf4 / int4) come out of the same phases too. llama.cpp (llama-cpp-python, one eval a token) can take a turn
the same way, on the yardstick of the same loop.

    python benchmarks/bench_read_fraction.py --checkpoint /tmp/mpt_lite_bench/ckpt-1.3b --variants int4,nf4,int8
    python benchmarks/bench_read_fraction.py --checkpoint /tmp/mpt_lite_bench/ckpt-1.3b \
        --gguf-dir /tmp/mpt_lite_bench/gguf-1.3b --variants int4,llama.cpp:q4_0,int8,llama.cpp:q8_0
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import LlamaCpp, MptLite  # noqa: E402


class Stepper:
    """One decode step at a time, batch 1, for an mpt_lite variant (the engine, as generate() runs it) or a
    llama.cpp one ("llama.cpp:q4_0": llama-cpp-python on --gguf-dir/model-q4_0.gguf, one eval a token)."""

    def __init__(self, name: str, args) -> None:
        self.name, self.llama = name, name.startswith("llama.cpp:")
        if self.llama:
            self.runner = LlamaCpp(args.gguf_dir / f"model-{name.split(':', 1)[1]}.gguf", args.threads)
            cfg = json.loads((args.checkpoint / "config.json").read_text())
            self.kv_token = 2 * cfg["n_layers"] * cfg["d_model"] * 2  # llama.cpp's default f16 cache
        else:
            from mpt_lite.runtime.kv_budget import kv_bytes_per_token

            self.runner = MptLite(args.checkpoint, name, args.threads)
            self.kv_token = kv_bytes_per_token(self.runner.model)
        self.weight_bytes = self.runner.weight_bytes()

    def start(self, prompt: list[int], steps: int) -> None:
        """The prompt and its first token, untimed."""
        if self.llama:
            self.runner.llm.reset()
            self.runner.llm.eval(prompt)
        else:
            self.engine = self.runner._engine(len(prompt))
            self.engine.add_request(prompt, steps + 1)
            with torch.inference_mode():
                self.engine.step()

    def step(self) -> None:
        if self.llama:
            llm = self.runner.llm
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        else:
            with torch.inference_mode():
                self.engine.step()


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
    ap.add_argument("--variants", default="int4,nf4,int8",
                    help="comma-separated: mpt_lite's as run_peer.py names them, llama.cpp's as llama.cpp:q4_0")
    ap.add_argument("--gguf-dir", type=Path, default=None, help="model-<type>.gguf files for llama.cpp variants")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=16, help="decode steps (each paired with a read pass) a round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-dtype", default=None, help="MPT_LITE_KV_DTYPE for the engines (default: the model's, "
                    "float32 for a quantized model)")
    ap.add_argument("--loop-pages", choices=["huge", "4k"], default="huge",
                    help="pages of the read loop's buffer (the loader puts the weights in huge pages by default)")
    args = ap.parse_args()
    if min(args.rounds, args.steps, args.threads) < 1:
        ap.error("--rounds, --steps and --threads must be >= 1")
    if args.kv_dtype:
        os.environ["MPT_LITE_KV_DTYPE"] = args.kv_dtype
    from mpt_lite import kernels, ops

    variants = [v for v in args.variants.split(",") if v]
    if any(v.startswith("llama.cpp:") for v in variants) and args.gguf_dir is None:
        ap.error("llama.cpp variants need --gguf-dir")

    steppers = {v: Stepper(v, args) for v in variants}
    ops.set_num_threads(args.threads)
    wbytes = {v: st.weight_bytes for v, st in steppers.items()}
    kv_token = {v: st.kv_token for v, st in steppers.items()}
    by_size: dict[int, torch.Tensor] = {}  # variants with the same weight bytes share one buffer
    for b in set(wbytes.values()):
        by_size[b] = loop_buffer(b, args.loop_pages == "huge")
    buffers = {v: by_size[b] for v, b in wbytes.items()}
    print(f"{kernels.current_isa()}, {args.threads} threads, loop buffers in {args.loop_pages} pages; weights: "
          + ", ".join(f"{v} {b / 1e6:.0f} MB" for v, b in wbytes.items()), flush=True)

    prompt = list(range(5, 37))
    # K/V the decode steps of a round read besides the weights: step i attends over the prompt and i + 2 tokens
    kv_round = {v: sum((len(prompt) + i + 2) * kv_token[v] for i in range(args.steps)) for v in variants}

    def read_pass(v: str) -> float:
        """Seconds of one timed pass of the read loop over v's buffer."""
        r = kernels.read_buffer_bandwidth(buffers[v], args.threads)
        return r["bytes"] / r["gb_s"] / 1e9

    def round_of(v: str) -> tuple[float, float]:
        """(weight GB/s, loop GB/s) over one round of paired steps and passes."""
        st = steppers[v]
        st.start(prompt, args.steps)
        step_s = loop_s = 0.0
        for i in range(args.steps):
            if i % 2:
                loop_s += read_pass(v)
            t0 = time.perf_counter()
            st.step()
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
    print("\nvariant        weights GB/s  loop GB/s  fraction: median (min-max)  with K/V   tok/s")
    for v in variants:
        w, lp = zip(*res[v])
        fr = [a / b for a, b in res[v]]
        kv = statistics.median(fr) * (1 + kv_round[v] / (wbytes[v] * args.steps))
        print(f"{v:14} {statistics.median(w):12.1f} {statistics.median(lp):10.1f}  "
              f"{statistics.median(fr):6.0%} ({min(fr):.0%}-{max(fr):.0%})       {kv:6.0%}   "
              f"{statistics.median(w) * 1e9 / wbytes[v]:.1f}")
    print(f"(with K/V: the K/V bytes the steps read counted too, {kv_round[variants[0]] / args.steps / 1e6:.1f} MB "
          "a step on average)")
    for v in variants[1:]:
        ratio = [(a[0] / wbytes[v]) / (b[0] / wbytes[variants[0]]) for a, b in zip(res[v], res[variants[0]])]
        print(f"tok/s {v} / {variants[0]} per round: median {statistics.median(ratio):.3f} "
              f"({min(ratio):.3f}-{max(ratio):.3f})")


if __name__ == "__main__":
    main()
