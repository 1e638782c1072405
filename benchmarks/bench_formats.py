"""Decode speed of each weight format on the same weights, in one process, the formats' runs
interleaved (round-robin) so that a busy machine slows them alike; prints medians and ratios.

    python benchmarks/bench_formats.py --quick --threads 1     # d_model 512, 4 layers, vocab 50432
    python benchmarks/bench_formats.py --quick --vocab 4032    # the blocks, not the embedding, dominate
    python benchmarks/bench_formats.py                         # synthetic 1.3B shapes

Formats: int4 and nf4 with the tied embedding at int8 (the 4-bit defaults), int4 with
embedding_bits=4, int4 with group_size 64 and 128, int8. Batch 1, a 32-token prompt, --new decode steps per timed run.

    python benchmarks/bench_formats.py --load /tmp/mpt-125m   # (benchmarks/synthetic.py 125m /tmp/mpt-125m)

times instead the whole 4-bit load of a checkpoint (CPU seconds, best of --rounds, one thread)
with the searched block scales against the absmax quantizers they replaced."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

FORMATS = {  # name -> from_pretrained keywords
    "int4 (embedding int8)": dict(bits=4, quant_type="int4"),
    "nf4 (embedding int8)": dict(bits=4, quant_type="nf4"),
    "int4, embedding_bits=4": dict(bits=4, quant_type="int4", embedding_bits=4),
    "int4, group_size=64": dict(bits=4, quant_type="int4", group_size=64),
    "int4, group_size=128": dict(bits=4, quant_type="int4", group_size=128),
    "int8": dict(bits=8),
}


def load_times(folder: str, rounds: int) -> None:
    import mpt_lite
    from mpt_lite import kernels

    torch.set_num_threads(1)
    kernels.set_num_threads(1)
    searched = kernels.search_quantize_int4, kernels.search_quantize_nf4
    absmax = kernels.quantize_int4, kernels.quantize_nf4
    best: dict[tuple[str, str], float] = {}
    for _ in range(rounds):
        for qt in ("int4", "nf4"):
            for which, fns in (("absmax", absmax), ("searched", searched)):
                kernels.search_quantize_int4, kernels.search_quantize_nf4 = fns  # what the formats call
                try:
                    c0 = time.process_time()
                    mpt_lite.MptForCausalLM.from_pretrained(folder, bits=4, quant_type=qt)
                    t = time.process_time() - c0
                finally:
                    kernels.search_quantize_int4, kernels.search_quantize_nf4 = searched
                best[(qt, which)] = min(t, best.get((qt, which), t))
    for qt in ("int4", "nf4"):
        a, s = best[(qt, "absmax")], best[(qt, "searched")]
        print(f"{qt}: absmax scales {a:.2f} s, searched {s:.2f} s: {s / a:.2f}x (CPU seconds, best of {rounds})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--new", type=int, default=16, help="decode steps per timed run")
    ap.add_argument("--vocab", type=int, default=50432, help="embedding rows (the mpt repos: 50432)")
    ap.add_argument("--load", metavar="CHECKPOINT", help="time loading this checkpoint instead")
    args = ap.parse_args()
    if args.load:
        return load_times(args.load, min(args.rounds, 3))
    torch.set_num_threads(args.threads)
    import mpt_lite
    from mpt_lite import Engine, MptConfig, MptForCausalLM, kernels

    kernels.set_num_threads(args.threads)
    dims = dict(d_model=512, n_heads=8, n_layers=4) if args.quick else dict(d_model=2048, n_heads=16, n_layers=24)
    torch.manual_seed(0)
    src = MptForCausalLM(MptConfig(**dims, vocab_size=args.vocab, expansion_ratio=4, max_seq_len=2048)).eval()
    with tempfile.TemporaryDirectory() as folder:
        src.save_pretrained(folder)
        del src
        models = {name: MptForCausalLM.from_pretrained(folder, **kw) for name, kw in FORMATS.items()}
    prompt = torch.randint(0, args.vocab, (32,), generator=torch.Generator().manual_seed(0))
    engines = {}
    for name, model in models.items():
        engine = Engine(model, max_bytes=1 << 30, prefix_caching=False)
        engine.add_request(prompt, args.new * (args.rounds + 1) + 1)
        engine.step()  # prefill
        for _ in range(args.new):  # warm-up
            engine.step()
        engines[name] = engine
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            t = time.perf_counter()
            for _ in range(args.new):
                engine.step()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["int4 (embedding int8)"])
    shape = "d_model 512, 4 layers" if args.quick else "d_model 2048, 24 layers"
    print(f"synthetic MPT ({shape}, vocab {args.vocab}), batch 1, 32-token prompt, {args.threads} threads, "
          f"median of {args.rounds} interleaved runs of {args.new} steps; kernels: {kernels.current_isa()}; "
          f"mpt_lite {getattr(mpt_lite, '__version__', '?')}")
    print("\n| format | decode tok/s | vs int4 (embedding int8) |\n|---|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {args.new / med:.1f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
