"""4-bit decode and prefill speed on one NVIDIA GPU: mpt_lite (nf4 weights, CUDA kernels, paged
Engine) against transformers' MptForCausalLM in bfloat16 (torch on the same GPU, its own KV
cache), on the same synthetic MPT weights. Medians of --repeats runs after a warm-up.

    python benchmarks/bench_cuda.py            # synthetic 1.3B MPT (d_model 2048, 24 layers)
    python benchmarks/bench_cuda.py --quick    # a small model, for a smoke run

Needs a GPU and the CUDA build (MPT_LITE_CUDA=on). Prints a markdown table (--out appends it)."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def sync_time(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def build_hf(args):
    import transformers

    dims = dict(d_model=512, n_heads=8, n_layers=4) if args.quick else dict(d_model=2048, n_heads=16, n_layers=24)
    cfg = transformers.MptConfig(**dims, vocab_size=50432, expansion_ratio=4, max_seq_len=4096, no_bias=True)
    torch.manual_seed(0)
    with torch.device("cuda"):
        hf = transformers.MptForCausalLM(cfg)
    return hf.to(torch.bfloat16).eval()


def hf_decode(model, prompt, new):
    with torch.inference_mode():
        out = model(prompt, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)

        def loop():
            nonlocal past, nxt
            for _ in range(new):
                o = model(nxt, past_key_values=past, use_cache=True)
                past, nxt = o.past_key_values, o.logits[:, -1:].argmax(-1)
            nxt.item()

        return sync_time(loop)


def hf_prefill(model, ids):
    with torch.inference_mode():
        return sync_time(lambda: model(ids, use_cache=True).logits[:, -1].argmax(-1).item())


def ours_decode(model, prompt, new, batch=1):
    from mpt_lite import Engine

    engine = Engine(model, max_bytes=4 << 30, prefix_caching=False)
    reqs = [engine.add_request(((prompt[0] + b) % 50000).cpu(), new + 2) for b in range(batch)]
    while any(not r.output for r in reqs):  # prefills and the first tokens
        engine.step()
    return sync_time(lambda: [engine.step() for _ in range(new)])


def profile_prefill(model, ids):
    """GPU kernel time by kernel for one prefill of ids (torch.profiler)."""
    ours_prefill(model, ids)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        wall = ours_prefill(model, ids)
    events = prof.key_averages()
    key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    gpu = sum(getattr(e, key, 0) for e in events) / 1e6
    print(f"[profile] prefill of {ids.shape[1]} tokens: wall {wall * 1e3:.2f} ms, GPU kernels {gpu * 1e3:.2f} ms")
    print(events.table(sort_by=key, row_limit=10))


def profile_decode(model, prompt, steps=8):
    """Wall time per decode step against the GPU kernel time inside it (torch.profiler)."""
    from mpt_lite import Engine

    engine = Engine(model, max_bytes=2 << 30, prefix_caching=False)
    engine.add_request(prompt[0].cpu(), steps + 2)
    engine.step()
    engine.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        wall = sync_time(lambda: [engine.step() for _ in range(steps)])
    events = prof.key_averages()
    gpu = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events) / 1e6
    graphs = engine._graphs
    print(f"[profile] decode step: wall {wall / steps * 1e3:.2f} ms, GPU kernels {gpu / steps * 1e3:.2f} ms; "
          f"CUDA graphs: {engine.cuda_graphs_fallback_reason or 'on'}, captured buckets "
          f"{sorted(graphs.graphs) if graphs else []}, capture error {graphs and graphs.capture_error}")
    print(events.table(sort_by="self_cuda_time_total" if not hasattr(events[0], "self_device_time_total")
                       else "self_device_time_total", row_limit=12))


def ours_prefill(model, ids):
    from mpt_lite import Engine

    engine = Engine(model, max_bytes=2 << 30, prefix_caching=False, max_batch_tokens=ids.shape[1])
    engine.add_request(ids[0].cpu(), 1)
    return sync_time(engine.step)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new", type=int, default=64, help="decode steps timed per run")
    ap.add_argument("--prefill", type=int, default=512, help="prompt tokens of the prefill runs")
    ap.add_argument("--quant", nargs="+", default=["nf4", "int4"], choices=["nf4", "int4", "int8"])
    ap.add_argument("--batch", type=int, default=16, help="also time decode with this many requests (0: skip)")
    ap.add_argument("--profile", action="store_true", help="profile a few decode steps of the first format")
    ap.add_argument("--out")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda.py needs a CUDA GPU visible to torch")
    import mpt_lite

    if not mpt_lite.ops.cuda_built():
        raise SystemExit(mpt_lite.ops.NO_CUDA_BUILD)
    t0 = time.perf_counter()
    hf = build_hf(args)
    ours = {}
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for q in args.quant:
                bits = 8 if q == "int8" else 4
                kw = {} if q == "int8" else {"quant_type": q}
                ours[q] = mpt_lite.MptForCausalLM.from_pretrained(d, bits=bits, device="cuda", **kw)
    print(f"[bench] models ready in {time.perf_counter() - t0:.1f} s; "
          f"GPU memory {torch.cuda.memory_allocated() / 2**30:.2f} GiB", flush=True)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 50000, (1, 32), generator=g).cuda()
    long = torch.randint(0, 50000, (1, args.prefill), generator=g).cuda()
    if args.profile:
        profile_decode(ours[args.quant[0]], prompt)
        profile_prefill(ours[args.quant[0]], long)
    rows = []
    models = [(f"mpt_lite {q}", ours_decode, ours_prefill, m) for q, m in ours.items()]
    for name, dec, pre, model in models + [("transformers bf16", hf_decode, hf_prefill, hf)]:
        dec(model, prompt, 4), pre(model, long)  # warm-up: lazy init, kernel loading
        d = statistics.median(dec(model, prompt, args.new) for _ in range(args.repeats))
        p = statistics.median(pre(model, long) for _ in range(args.repeats))
        bt = ""
        if args.batch and dec is ours_decode:
            db = statistics.median(dec(model, prompt, args.new, args.batch) for _ in range(max(1, args.repeats // 2)))
            bt = args.batch * args.new / db
        rows.append((name, args.new / d, args.prefill / p, bt))
        print(f"[bench] {name}: decode {args.new / d:.1f} tok/s, prefill {args.prefill / p:.0f} tok/s"
              + (f", batch {args.batch} decode {bt:.0f} tok/s" if bt else ""), flush=True)
    gpu = torch.cuda.get_device_name(0)
    size = "quick" if args.quick else "1.3B"
    lines = [f"GPU: {gpu}; synthetic MPT {size}; decode after a 32-token prompt ({args.new} steps), "
             f"prefill of {args.prefill} tokens; medians of {args.repeats}",
             "", f"| model | decode tok/s (batch 1) | prefill tok/s | batch {args.batch} decode tok/s | "
             "decode / bf16 | prefill / bf16 | batch / batch 1 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    hf_row = rows[-1]
    for n, d, p, bt in rows:
        ratio = f"{bt / d:.1f}x" if bt else ""
        lines.append(f"| {n} | {d:.1f} | {p:.0f} | {bt and f'{bt:.0f}'} | {d / hf_row[1]:.2f}x | "
                     f"{p / hf_row[2]:.2f}x | {ratio} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n\n")


if __name__ == "__main__":
    main()
