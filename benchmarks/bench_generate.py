"""Generation speed of mpt_lite's Engine (paged KV cache, batched decoding) against transformers'
MptForCausalLM on the same weights (shared tensors), in the same process.

    python benchmarks/bench_generate.py                 # synthetic 1.3B MPT (d_model 2048, 24 layers)
    python benchmarks/bench_generate.py --quick         # a small model, for a smoke run

Reports medians of --repeats runs: decode tokens/s at batch 1 (32-token prompts), throughput at
batch 8 and 32, prefill tokens/s at 512 and 2048 tokens, decode tokens/s at 2048 tokens of
context, and the ratios the issue targets. Prints a markdown table (and --out appends it to a file)."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def build(args):
    import transformers

    from mpt_lite import MptConfig, MptForCausalLM

    dims = dict(d_model=512, n_heads=8, n_layers=4, vocab_size=50432) if args.quick else \
        dict(d_model=2048, n_heads=16, n_layers=24, vocab_size=50432)
    cfg = dict(dims, expansion_ratio=4, max_seq_len=4096, no_bias=True, attn_config={"alibi": True})
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    hf = transformers.MptForCausalLM(transformers.MptConfig(**cfg)).to(dtype).eval()
    with torch.device("meta"):
        ours = MptForCausalLM(MptConfig(**cfg))
    ours.load_state_dict(hf.state_dict(), strict=False, assign=True)  # the same tensors, no copy
    ours.eval()
    missing = [n for n, p in ours.named_parameters() if p.is_meta]
    if missing:
        raise SystemExit(f"weights not shared: {missing[:3]}")
    return ours, hf


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def ours_decode(model, batch, ctx, new, max_bytes):
    """Seconds for `new` decode steps of `batch` sequences with `ctx`-token prompts (prefill excluded)."""
    from mpt_lite import Engine

    engine = Engine(model, max_bytes=max_bytes, max_batch_tokens=max(batch * ctx, 2048), prefix_caching=False)
    g = torch.Generator().manual_seed(batch)
    for _ in range(batch):
        engine.add_request(torch.randint(0, 50000, (ctx,), generator=g), new + 1)
    engine.step()  # prefill (and the first token)
    return timed(lambda: [None for _ in engine.run()])


def hf_decode(model, batch, ctx, new):
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, 50000, (batch, ctx), generator=g)
    with torch.inference_mode():
        out = model(ids, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)

        def loop():
            nonlocal past, nxt
            for _ in range(new):
                o = model(nxt, past_key_values=past, use_cache=True)
                past, nxt = o.past_key_values, o.logits[:, -1:].argmax(-1)

        return timed(loop)


def ours_prefill(model, n, max_bytes):
    from mpt_lite import Engine

    engine = Engine(model, max_bytes=max_bytes, max_batch_tokens=n, prefix_caching=False)
    engine.add_request(torch.randint(0, 50000, (n,)), 1)
    return timed(engine.step)


def hf_prefill(model, n):
    ids = torch.randint(0, 50000, (1, n))
    with torch.inference_mode():
        return timed(lambda: model(ids, use_cache=True, logits_to_keep=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new", type=int, default=8, help="decode steps timed per run")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--out", help="append the markdown table to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from mpt_lite import ops

    ops.set_num_threads(args.threads)
    ours, hf = build(args)
    max_bytes = 8 << 30
    med = lambda f: statistics.median(f() for _ in range(args.repeats))  # noqa: E731
    rows = []

    def row(name, work, f_ours, f_hf):
        o = work / med(f_ours)
        h = None if args.skip_hf else work / med(f_hf)
        rows.append((name, o, h))
        print(f"{name:34s} mpt_lite {o:9.2f}" + ("" if h is None else f"  transformers {h:9.2f}  x{o / h:.2f}"),
              flush=True)
        return o

    n = args.new
    ours_decode(ours, 2, 16, 2, max_bytes)  # warm-up: thread pools, oneDNN kernels, allocator
    if not args.skip_hf:
        hf_decode(hf, 2, 16, 2)
    d1 = row("decode tok/s, batch 1 (ctx 32)", n, lambda: ours_decode(ours, 1, 32, n, max_bytes),
             lambda: hf_decode(hf, 1, 32, n))
    d8 = row("decode tok/s, batch 8 (ctx 32)", 8 * n, lambda: ours_decode(ours, 8, 32, n, max_bytes),
             lambda: hf_decode(hf, 8, 32, n))
    row("decode tok/s, batch 32 (ctx 32)", 32 * n, lambda: ours_decode(ours, 32, 32, n, max_bytes),
        lambda: hf_decode(hf, 32, 32, n))
    row("prefill tok/s, 512 tokens", 512, lambda: ours_prefill(ours, 512, max_bytes), lambda: hf_prefill(hf, 512))
    row("prefill tok/s, 2048 tokens", 2048, lambda: ours_prefill(ours, 2048, max_bytes),
        lambda: hf_prefill(hf, 2048))
    dl = row("decode tok/s, batch 1 (ctx 2048)", n, lambda: ours_decode(ours, 1, 2048, n, max_bytes),
             lambda: hf_decode(hf, 1, 2048, n))
    model = "quick model (d_model 512, 4 layers)" if args.quick else "synthetic MPT-1.3B (d_model 2048, 24 layers, vocab 50432)"
    lines = [
        f"{model}, {args.dtype} weights and KV cache, {args.threads} threads, median of {args.repeats} runs, "
        f"{n} decode steps per run; kernels: {ops.current_isa()}",
        "",
        "| measurement | mpt_lite | transformers | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name, o, h in rows:
        lines.append(f"| {name} | {o:.2f} | {'-' if h is None else f'{h:.2f}'} | "
                     f"{'-' if h is None else f'{o / h:.2f}x'} |")
    lines += ["", f"- batch-8 throughput / batch-1 decode: {d8 / d1:.2f}x (target >= 5x)",
              f"- decode at 2048 context / decode at 32: {dl / d1:.0%} (target >= 85%)"]
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
