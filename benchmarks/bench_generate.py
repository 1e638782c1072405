"""Generation speed of mpt_lite's Engine (paged KV cache, batched decoding) against transformers'
MptForCausalLM on the same weights (shared tensors), in the same process.

    python benchmarks/bench_generate.py                 # synthetic 1.3B MPT (d_model 2048, 24 layers)
    python benchmarks/bench_generate.py --quick         # a small model, for a smoke run

Reports medians of --repeats runs (decode: the prompts are prefilled once, then --repeats runs of
--new steps are timed): decode tokens/s at batch 1 (32-token prompts), throughput at
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
    if args.bits != "none":  # mpt_lite quantizes the same weights through its real loading path
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            hf.save_pretrained(folder)
            ours = MptForCausalLM.from_pretrained(folder, bits=int(args.bits), quant_type=args.quant_type,
                                                  embedding_bits=args.embedding_bits)
        return ours, hf
    with torch.device("meta"):
        ours = MptForCausalLM(MptConfig(**cfg))
    ours.load_state_dict(hf.state_dict(), strict=False, assign=True)  # the same tensors, no copy
    ours.eval()
    missing = [n for n, p in ours.named_parameters() if p.is_meta]
    if missing:
        raise SystemExit(f"weights not shared: {missing[:3]}")
    return ours, hf


def weights_note(args) -> str:
    if args.bits == "none":
        return ""
    from mpt_lite.quant import DEFAULT_4BIT

    fmt = "int8" if args.bits == "8" else (args.quant_type or DEFAULT_4BIT)
    if args.bits == "4":
        fmt += f", embedding {'int8' if args.embedding_bits != 4 else 'at 4 bits'}"
    return f" (mpt_lite: {fmt} weights, transformers: {args.dtype})"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def ours_decode(model, batch, ctx, new, repeats, max_bytes):
    """(prefill seconds, [seconds of `new` decode steps] * repeats) for `batch` sequences with
    `ctx`-token prompts; the prompts are prefilled once."""
    from mpt_lite import Engine

    engine = Engine(model, max_bytes=max_bytes, max_batch_tokens=max(batch * ctx, 2048), prefix_caching=False)
    g = torch.Generator().manual_seed(batch)
    for _ in range(batch):
        engine.add_request(torch.randint(0, 50000, (ctx,), generator=g), new * repeats + 1)
    prefill = timed(engine.step)  # the whole prompt batch (and the first token)
    return prefill, [timed(lambda: [engine.step() for _ in range(new)]) for _ in range(repeats)]


def hf_decode(model, batch, ctx, new, repeats):
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, 50000, (batch, ctx), generator=g)
    state = {}

    def prefill():
        out = model(ids, use_cache=True, logits_to_keep=1)
        state["past"], state["nxt"] = out.past_key_values, out.logits[:, -1:].argmax(-1)

    def loop():
        for _ in range(new):
            o = model(state["nxt"], past_key_values=state["past"], use_cache=True)
            state["past"], state["nxt"] = o.past_key_values, o.logits[:, -1:].argmax(-1)

    with torch.inference_mode():
        return timed(prefill), [timed(loop) for _ in range(repeats)]


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
    ap.add_argument("--prefill-2048-repeats", type=int, default=3, help="runs of the (slow) 2048-token prefill")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--bits", default="none", choices=["none", "8", "4"],
                    help="mpt_lite's weights: shared unquantized tensors (none) or quantized from them")
    ap.add_argument("--quant-type", default=None, choices=["nf4", "int4"])
    ap.add_argument("--embedding-bits", type=int, default=None, choices=[4, 8], help="with --bits 4 (default 8)")
    ap.add_argument("--out", help="append the markdown table to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from mpt_lite import ops

    ops.set_num_threads(args.threads)
    ours, hf = build(args)
    max_bytes = 8 << 30
    R, n = args.repeats, args.new
    rows = []

    def add(name, work, t_ours, t_hf):
        o, h = work / statistics.median(t_ours), None if t_hf is None else work / statistics.median(t_hf)
        rows.append((name, o, h))
        print(f"{name:34s} mpt_lite {o:9.2f}" + ("" if h is None else f"  transformers {h:9.2f}  x{o / h:.2f}"),
              flush=True)
        return o

    def decode(batch, ctx):
        po, to = ours_decode(ours, batch, ctx, n, R, max_bytes)
        ph, th = (None, None) if args.skip_hf else hf_decode(hf, batch, ctx, n, R)
        return po, to, ph, th

    ours_decode(ours, 2, 16, 2, 1, max_bytes)  # warm-up: thread pools, oneDNN kernels, allocator
    if not args.skip_hf:
        hf_decode(hf, 2, 16, 2, 1)
    _, to, _, th = decode(1, 32)
    d1 = add("decode tok/s, batch 1 (ctx 32)", n, to, th)
    _, to, _, th = decode(8, 32)
    d8 = add("decode tok/s, batch 8 (ctx 32)", 8 * n, to, th)
    _, to, _, th = decode(32, 32)
    add("decode tok/s, batch 32 (ctx 32)", 32 * n, to, th)
    add("prefill tok/s, 512 tokens", 512, [ours_prefill(ours, 512, max_bytes) for _ in range(R)],
        None if args.skip_hf else [hf_prefill(hf, 512) for _ in range(R)])
    po, to, ph, th = decode(1, 2048)
    extra = max(0, args.prefill_2048_repeats - 1)
    add("prefill tok/s, 2048 tokens", 2048, [po] + [ours_prefill(ours, 2048, max_bytes) for _ in range(extra)],
        None if args.skip_hf else [ph] + [hf_prefill(hf, 2048) for _ in range(extra)])
    dl = add("decode tok/s, batch 1 (ctx 2048)", n, to, th)
    model = "quick model (d_model 512, 4 layers)" if args.quick else "synthetic MPT-1.3B (d_model 2048, 24 layers, vocab 50432)"
    lines = [
        f"{model}, {args.dtype} weights and KV cache"
        f"{weights_note(args)}"
        f", {args.threads} threads, median of {args.repeats} runs, "
        f"{n} decode steps per run (one prefill, then {R} timed runs), 2048-token prefill: median of "
        f"{args.prefill_2048_repeats}; kernels: {ops.current_isa()}",
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
