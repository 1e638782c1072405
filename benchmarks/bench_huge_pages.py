"""Decode from weights in 4 KiB pages against the same weights in transparent huge pages, in one process.

Loads the model with MPT_LITE_HUGE_PAGES=0, makes a second copy of every weight of 64 KiB or more in huge pages
(hub.placement.place_weights, the originals kept), then alternates the two sets, a fresh engine per round
(its DecodePlan takes the pointers of the set in place), the order reversed every other round. In-process, so
that the host's slow and fast phases fall on both sets alike; prints each round's ratio and the medians.

    python benchmarks/bench_huge_pages.py --checkpoint /tmp/mpt_lite_bench/ckpt-1.3b --variant int4 --rounds 8
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--variant", default="int4", choices=["int4", "int4-e6", "nf4", "int8"])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ["MPT_LITE_HUGE_PAGES"] = "0"  # the load keeps 4 KiB pages; the huge set is made below

    import mpt_lite
    from mpt_lite import Engine, ops
    from mpt_lite.hub.placement import place_weights

    ops.set_num_threads(args.threads)
    bits = 8 if args.variant == "int8" else 4
    kw = {"embedding_bits": 6} if args.variant.endswith("-e6") else {}
    qtype = None if bits == 8 else args.variant.split("-")[0]
    model = mpt_lite.MptForCausalLM.from_pretrained(args.checkpoint, bits=bits, quant_type=qtype, **kw).eval()

    def tensors():
        return {(mod, kind, name): t for mod in model.modules()
                for kind, items in (("p", mod.named_parameters(recurse=False)), ("b", mod.named_buffers(recurse=False)))
                for name, t in items if t is not None}

    kept = {k: t.data if k[1] == "p" else t for k, t in tensors().items()}  # keeps the 4 KiB originals alive
    moved = place_weights(model)
    huge = {k: t.data if k[1] == "p" else t for k, t in tensors().items()}
    print(f"{args.variant}: {moved / 1e9:.2f} GB in huge pages; "
          + "".join(line.strip() + " " for line in open("/proc/self/smaps_rollup") if "AnonHuge" in line))

    def use(which):
        for (mod, kind, name), t in which.items():
            if kind == "p":
                getattr(mod, name).data = t
            else:
                setattr(mod, name, t)

    def decode() -> float:
        engine = Engine(model, max_bytes=1 << 30, max_batch_tokens=512, prefix_caching=False)
        engine.add_request(list(range(5, 37)), args.new + 1)
        with torch.inference_mode():
            engine.step()
            t0 = time.perf_counter()
            for _ in range(args.new):
                engine.step()
            return args.new / (time.perf_counter() - t0)

    sets = {"4k": kept, "huge": huge}
    res: dict[str, list[float]] = {"4k": [], "huge": []}
    use(kept)
    decode()  # warm: the pool's threads, the KV pages
    for r in range(args.rounds):
        for name in (("4k", "huge") if r % 2 == 0 else ("huge", "4k")):
            use(sets[name])
            res[name].append(decode())
        print(f"round {r}: 4k {res['4k'][-1]:.1f}  huge {res['huge'][-1]:.1f} tok/s", flush=True)
    ratios = [h / f for h, f in zip(res["huge"], res["4k"])]
    print(f"medians: 4k {statistics.median(res['4k']):.1f}, huge {statistics.median(res['huge']):.1f} tok/s; "
          f"huge / 4k per round {', '.join(f'{x:.3f}' for x in ratios)} (median {statistics.median(ratios):.3f}, "
          f"{sum(x > 1 for x in ratios)} of {len(ratios)} faster)")


if __name__ == "__main__":
    main()
