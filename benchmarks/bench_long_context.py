"""Batch-1 decode speed against the length of the context, per KV cache dtype, on a synthetic MPT
(int4 weights by default), through the engine (its native step where the model allows it).

    python benchmarks/bench_long_context.py --model 125m                      # contexts 32 512 2048 8192
    python benchmarks/bench_long_context.py --model 1.3b --contexts 32 2048 --kv-dtypes int8

For each KV dtype one engine per context is prefilled once; then rounds of --new decode steps run
alternating over the contexts (32, 512, ..., 32, 512, ...) in this one process, and the table
gives the median tokens/s of --repeats rounds (in brackets: the process's CPU milliseconds per
token, both threads together, which a loaded machine disturbs less than wall time) and each
context's ratio to the shortest one's (the issue's target: 2048 tokens >= 0.85 of 32).

--llama-cpp-kv f16 q8_0 adds llama.cpp rows (llama-cpp-python, `make bench-setup`) on the same model's
GGUF at --gguf-quant (bench_compare.py's conversion in --checkpoints/gguf-MODEL): the same contexts,
prefilled once each, then the same rounds of --new decode steps. Quantized KV types need llama.cpp's
flash attention, which this turns on for them (f16 runs without it, llama.cpp's default on the CPU)."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from synthetic import write_checkpoint  # noqa: E402

KV_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8, "int4": torch.quint4x2}


def build(args):
    from mpt_lite import MptForCausalLM

    folder = write_checkpoint(Path(args.checkpoints) / f"ckpt-{args.model}", args.model)
    return MptForCausalLM.from_pretrained(folder, bits=args.bits, quant_type=args.quant_type,
                                          max_seq_len=max(args.contexts) + args.new * (args.repeats + 1) + 64)


def prefilled_engine(model, ctx: int, kv_dtype: torch.dtype, steps: int):
    """An engine holding one request whose `ctx`-token prompt is prefilled (its first token drawn)."""
    from mpt_lite import Engine
    from mpt_lite.runtime.kv_cache import PagedKVCache

    cfg, bs = model.config, 16
    blocks = (ctx + steps + bs) // bs + 2
    per_block = PagedKVCache.block_bytes(cfg.n_layers, cfg.kv_n_heads, cfg.head_dim, bs, kv_dtype)
    engine = Engine(model, block_size=bs, max_bytes=blocks * per_block, kv_dtype=kv_dtype, prefix_caching=False,
                    max_batch_tokens=2048)
    g = torch.Generator().manual_seed(ctx)
    req = engine.add_request(torch.randint(0, min(50000, cfg.vocab_size), (ctx,), generator=g), steps + 1, eos_token_id=[])
    while not req.output:
        engine.step()
    return engine


LLAMA_KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml type ids


def llama_cpp_row(args, kv: str) -> tuple[dict, dict]:
    """llama.cpp's tok/s and CPU ms a token per context, timed as the mpt_lite rows are (a llama context
    per context, each prefilled once)."""
    import llama_cpp

    gguf = Path(args.checkpoints) / f"gguf-{args.model}" / f"model-{args.gguf_quant}.gguf"
    if not gguf.is_file():
        raise SystemExit(f"{gguf} is missing: run benchmarks/bench_compare.py once to convert the checkpoint")
    steps = args.new * (args.repeats + 1)
    kw = dict(n_threads=args.threads, n_threads_batch=args.threads, n_batch=512, n_ubatch=512, verbose=False)
    if kv != "f16":
        kw.update(type_k=LLAMA_KV_TYPES[kv], type_v=LLAMA_KV_TYPES[kv], flash_attn=True)
    llms = {}
    for c in args.contexts:
        llms[c] = llama_cpp.Llama(str(gguf), n_ctx=c + steps + 64, **kw)
        llms[c].eval(torch.randint(0, 50000, (c,), generator=torch.Generator().manual_seed(c)).tolist())
    return timed_rounds({c: (lambda llm=llm: llm.eval([1000])) for c, llm in llms.items()}, args)  # any token


def timed_rounds(steps: dict, args) -> tuple[dict, dict]:
    """Tok/s and CPU ms a token per context: rounds of --new calls of each context's decode step, alternating
    over the contexts, --repeats timed rounds after one that warms up; medians."""
    times = {c: [] for c in steps}
    cpu = {c: [] for c in steps}
    for r in range(args.repeats + 1):
        for c, step in steps.items():
            t, u = time.perf_counter(), time.process_time()
            for _ in range(args.new):
                step()
            if r:
                times[c].append(time.perf_counter() - t)
                cpu[c].append(time.process_time() - u)
    return ({c: args.new / statistics.median(times[c]) for c in steps},
            {c: 1e3 * statistics.median(cpu[c]) / args.new for c in steps})


def pruned_step(step, on: bool):
    """The engine's step with attention's ALiBi block skipping on or off."""
    from mpt_lite import ops

    def run():
        with ops.use_alibi_pruning(on):
            step()
    return run


def table_row(name: str, contexts: list[int], tps: dict, cms: dict) -> str:
    base = tps[contexts[0]]
    return (f"| {name} | " + " | ".join(f"{tps[c]:.1f} ({cms[c]:.0f})" for c in contexts) + " | "
            + " | ".join(f"{tps[c] / base:.2f}" for c in contexts[1:]) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="125m", choices=["125m", "1.3b"])
    ap.add_argument("--contexts", type=int, nargs="+", default=[32, 512, 2048, 8192])
    ap.add_argument("--kv-dtypes", nargs="+", default=list(KV_DTYPES), choices=list(KV_DTYPES))
    ap.add_argument("--bits", type=int, default=4, choices=[4, 8])
    ap.add_argument("--quant-type", default="int4", choices=["int4", "nf4"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=8, help="decode steps per timed round")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per context")
    ap.add_argument("--checkpoints", default="/tmp/mpt_lite_bench", help="where the synthetic checkpoints live")
    ap.add_argument("--out", help="append the markdown table to this file")
    ap.add_argument("--llama-cpp-kv", nargs="*", default=[], choices=list(LLAMA_KV_TYPES),
                    help="also time llama.cpp with these KV types")
    ap.add_argument("--gguf-quant", default="q4_0", help="llama.cpp's weights: model-QUANT.gguf")
    ap.add_argument("--alibi-pruning", nargs="+", default=["on"], choices=["on", "off"],
                    help="attention's ALiBi block skipping (kernels.set_alibi_pruning); "
                         "several: one row each, their rounds interleaved on the same engines")
    args = ap.parse_args()
    args.contexts = sorted(set(args.contexts))
    torch.set_num_threads(args.threads)
    from mpt_lite import ops

    ops.set_num_threads(args.threads)
    model = build(args)
    lines = [f"model {args.model}, {args.quant_type if args.bits == 4 else 'int8'} weights, batch 1, "
             f"{args.threads} threads, {args.new} steps x {args.repeats} rounds, load {os.getloadavg()[0]:.2f}",
             "", "| KV dtype | " + " | ".join(f"ctx {c}" for c in args.contexts) + " | "
             + " | ".join(f"{c}/{args.contexts[0]}" for c in args.contexts[1:]) + " |",
             "|" + "---|" * (2 * len(args.contexts))]
    print(lines[0], flush=True)
    for name in args.kv_dtypes:
        steps = args.new * (args.repeats + 1) * len(args.alibi_pruning)
        engines = {c: prefilled_engine(model, c, KV_DTYPES[name], steps) for c in args.contexts}
        calls = {(p, c): pruned_step(e.step, p == "on") for p in args.alibi_pruning for c, e in engines.items()}
        ops.alibi_pruning_stats(reset=True)
        tps, cms = timed_rounds(calls, args)
        skipped, seen = ops.alibi_pruning_stats(reset=True)
        for p in args.alibi_pruning:
            label = name if args.alibi_pruning == ["on"] else f"{name}, pruning {p}"
            lines.append(table_row(label, args.contexts, {c: tps[p, c] for c in args.contexts},
                                   {c: cms[p, c] for c in args.contexts}))
            print(lines[-1], flush=True)
        if seen:
            print(f"  attention skipped {skipped / seen:.1%} of its key x head pairs (pruning on)", flush=True)
        del engines
    for kv in args.llama_cpp_kv:
        lines.append(table_row(f"llama.cpp {args.gguf_quant}, KV {kv}", args.contexts, *llama_cpp_row(args, kv)))
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n\n")


if __name__ == "__main__":
    main()
