"""Measures one (peer, variant) in a fresh process and prints one JSON line; bench_compare.py runs
it once per configuration so that load time and peak RSS are those of a fresh process and no
library's threads or allocations linger into another's timings.

    python benchmarks/run_peer.py --peer mpt_lite --variant int4 --checkpoint DIR --gguf-dir DIR --task speed
    python benchmarks/run_peer.py ... --task logits --stream-len 256 --logits-out x.npy

speed: load time (the from_pretrained / Llama() call) and peak RSS right after it; prefill
tokens/s (--prefill-len prompt); decode tokens/s (--new tokens after a --ctx prompt); batched
decode throughput (--batches, --batch-new steps); bytes of weights per token. Medians of
--repeats runs, after one untimed warm-up of each measurement."""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
    execve, so a child would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=length).tolist() for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", required=True)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--gguf-dir", type=Path, default=Path("."))
    ap.add_argument("--task", choices=["speed", "logits"], default="speed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--ctx", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--batch-new", type=int, default=16)
    ap.add_argument("--stream-len", type=int, default=256)
    ap.add_argument("--logits-out", type=Path)
    args = ap.parse_args()

    os.environ.setdefault("MPT_LITE_NUM_THREADS", str(args.threads))
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from peers import NotSupported, make

    vocab = json.loads((args.checkpoint / "config.json").read_text())["vocab_size"]
    res: dict = {"peer": args.peer, "variant": args.variant, "rss_before_load_mb": rss_mb()}
    t = time.perf_counter()
    runner = make(args.peer, args.variant, args.checkpoint, args.gguf_dir, args.threads)
    res["load_s"] = time.perf_counter() - t
    res["peak_rss_load_mb"] = peak_rss_mb()
    res["weight_bytes"] = runner.weight_bytes()

    if args.task == "logits":
        stream = prompts(1, args.stream_len, vocab, seed=1234)[0]
        np.save(args.logits_out, runner.logits(stream).astype(np.float32))
        print(json.dumps(res), flush=True)
        return

    def median_rate(fn, work: float) -> tuple[float, list[float]]:
        fn()  # warm-up
        times = [fn() for _ in range(args.repeats)]
        return work / statistics.median(times), times

    p = prompts(1, args.prefill_len, vocab, seed=1)[0]
    res["prefill_tok_s"], res["prefill_times"] = median_rate(lambda: runner.prefill(p), args.prefill_len)
    c = prompts(1, args.ctx, vocab, seed=2)
    res["decode_tok_s"], res["decode_times"] = median_rate(lambda: runner.decode(c, args.new), args.new)
    for b in [int(x) for x in args.batches.split(",") if x]:
        cb = prompts(b, args.ctx, vocab, seed=3)
        try:
            res[f"batch{b}_tok_s"], _ = median_rate(lambda: runner.decode(cb, args.batch_new), b * args.batch_new)
        except NotSupported as e:
            res[f"batch{b}_skip"] = str(e)
    res["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
