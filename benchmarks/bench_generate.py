"""Generation speed of mpt_lite's Engine (paged KV cache, batched decoding) against transformers'
MptForCausalLM on the same weights (shared tensors), in the same process.

    python benchmarks/bench_generate.py                 # synthetic 1.3B MPT (d_model 2048, 24 layers)
    python benchmarks/bench_generate.py --quick         # a small model, for a smoke run
    python benchmarks/bench_generate.py --model 125m --bits 4 --quant-type int4 --skip-hf --decode-only
    python benchmarks/bench_generate.py --model default --skip-hf --decode-only   # mpt_lite.load()
    MPT_LITE_NATIVE_STEP=0 python benchmarks/bench_generate.py ...   # the engine's torch path
    python benchmarks/bench_generate.py --model default --native-vs-torch   # both paths, runs alternating

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


SHAPES = {"quick": dict(d_model=512, n_heads=8, n_layers=4, vocab_size=50432),
          "125m": dict(d_model=768, n_heads=12, n_layers=12, vocab_size=50432),
          "1.3b": dict(d_model=2048, n_heads=16, n_layers=24, vocab_size=50432)}
VOCAB = [50000]  # token ids are drawn below this (the default model's vocabulary is smaller)


def build(args):
    import transformers

    from mpt_lite import MptConfig, MptForCausalLM

    if args.model == "default":  # the embedded model, 4-bit as mpt_lite.load() gives it; no transformers peer
        import mpt_lite

        return mpt_lite.load(), None
    dims = SHAPES[args.model]
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
    if args.model == "default":
        return " (mpt_lite.load()'s 4-bit weights, float32 activations and KV cache)"
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


def ours_decode(model, batch, ctx, new, repeats, max_bytes, native_step=None):
    """(prefill seconds, [seconds of `new` decode steps] * repeats) for `batch` sequences with
    `ctx`-token prompts; the prompts are prefilled once."""
    from mpt_lite import Engine

    engine = Engine(model, max_bytes=max_bytes, max_batch_tokens=max(batch * ctx, 2048), prefix_caching=False,
                    native_step=native_step)
    g = torch.Generator().manual_seed(batch)
    for _ in range(batch):
        engine.add_request(torch.randint(0, VOCAB[0], (ctx,), generator=g), new * repeats + 1)
    prefill = timed(engine.step)  # the whole prompt batch (and the first token)
    return prefill, [timed(lambda: [engine.step() for _ in range(new)]) for _ in range(repeats)]


def hf_decode(model, batch, ctx, new, repeats):
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, VOCAB[0], (batch, ctx), generator=g)
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


def ours_prefill(model, n, max_bytes, native_step=None):
    from mpt_lite import Engine

    engine = Engine(model, max_bytes=max_bytes, max_batch_tokens=n, prefix_caching=False, native_step=native_step)
    engine.add_request(torch.randint(0, VOCAB[0], (n,)), 1)
    return timed(engine.step)


def hf_prefill(model, n):
    ids = torch.randint(0, VOCAB[0], (1, n))
    with torch.inference_mode():
        return timed(lambda: model(ids, use_cache=True, logits_to_keep=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the same as --model quick")
    ap.add_argument("--model", default="1.3b", choices=["1.3b", "125m", "quick", "default"])
    ap.add_argument("--native-vs-torch", action="store_true",
                    help="only mpt_lite: the engine's native step against its torch path, runs interleaved")
    ap.add_argument("--decode-only", action="store_true",
                    help="only decode at batch 1 and 8 (ctx 32) and the 512-token prefill")
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
    if args.quick:
        args.model = "quick"
    if args.model == "default":
        args.skip_hf = True
    torch.set_num_threads(args.threads)
    from mpt_lite import ops

    ops.set_num_threads(args.threads)
    ours, hf = build(args)
    VOCAB[0] = min(VOCAB[0], ours.config.vocab_size)
    if args.native_vs_torch:
        return native_vs_torch(args, ours)
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
    if not args.decode_only:
        _, to, _, th = decode(32, 32)
        add("decode tok/s, batch 32 (ctx 32)", 32 * n, to, th)
    add("prefill tok/s, 512 tokens", 512, [ours_prefill(ours, 512, max_bytes) for _ in range(R)],
        None if args.skip_hf else [hf_prefill(hf, 512) for _ in range(R)])
    if args.decode_only:
        return report(args, rows, d1, d8, None)
    po, to, ph, th = decode(1, 2048)
    extra = max(0, args.prefill_2048_repeats - 1)
    add("prefill tok/s, 2048 tokens", 2048, [po] + [ours_prefill(ours, 2048, max_bytes) for _ in range(extra)],
        None if args.skip_hf else [ph] + [hf_prefill(hf, 2048) for _ in range(extra)])
    dl = add("decode tok/s, batch 1 (ctx 2048)", n, to, th)
    report(args, rows, d1, d8, dl)


def native_vs_torch(args, model, max_bytes=1 << 30):
    """Decode (batch 1 and 8, ctx 32) and 512-token prefill through the engine's torch path and its
    native step, alternating run by run so that both see the same machine load."""
    from mpt_lite import ops

    n, R = args.new, args.repeats
    work = {"decode tok/s, batch 1 (ctx 32)": (lambda ns: ours_decode(model, 1, 32, n, 1, max_bytes, ns)[1][0], n),
            "decode tok/s, batch 8 (ctx 32)": (lambda ns: ours_decode(model, 8, 32, n, 1, max_bytes, ns)[1][0], 8 * n),
            "prefill tok/s, 512 tokens": (lambda ns: ours_prefill(model, 512, max_bytes, ns), 512)}
    ours_decode(model, 2, 16, 2, 1, max_bytes, True)  # warm-up
    ours_decode(model, 2, 16, 2, 1, max_bytes, False)
    lines = [f"{args.model} model{weights_note(args)}, {args.threads} threads, median of {R} runs per path "
             f"(alternating), {n} decode steps per run; kernels: {ops.current_isa()}", "",
             "| measurement | torch path | native step | native / torch |", "|---|---:|---:|---:|"]
    for name, (fn, count) in work.items():
        times = {False: [], True: []}
        for _ in range(R):
            for ns in (False, True):
                times[ns].append(fn(ns))
        t, nat = count / statistics.median(times[False]), count / statistics.median(times[True])
        print(f"{name:34s} torch path {t:9.2f}  native {nat:9.2f}  x{nat / t:.2f}", flush=True)
        lines.append(f"| {name} | {t:.2f} | {nat:.2f} | {nat / t:.2f}x |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n")


def report(args, rows, d1, d8, dl):
    from mpt_lite import ops

    n, R = args.new, args.repeats
    model = {"quick": "quick model (d_model 512, 4 layers)",
             "125m": "synthetic MPT-125M (d_model 768, 12 layers, vocab 50432)",
             "1.3b": "synthetic MPT-1.3B (d_model 2048, 24 layers, vocab 50432)",
             "default": "the embedded default model (mpt_lite.load(), 4-bit)"}[args.model]
    native = os.environ.get("MPT_LITE_NATIVE_STEP", "1") not in ("0", "false", "off", "no")
    lines = [
        f"{model}, engine step: {'native (one C++ call)' if native else 'torch path'}, "
        f"{'' if args.model == 'default' else args.dtype + ' weights and KV cache'}"
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
    lines += ["", f"- batch-8 throughput / batch-1 decode: {d8 / d1:.2f}x (target >= 5x)"]
    if dl is not None:
        lines.append(f"- decode at 2048 context / decode at 32: {dl / d1:.0%} (target >= 85%)")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
