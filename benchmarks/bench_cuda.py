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


def ours_decode(model, prompt, new):
    from mpt_lite import Engine

    engine = Engine(model, max_bytes=2 << 30, prefix_caching=False)
    engine.add_request(prompt[0].cpu(), new + 1)
    engine.step()  # prefill and the first token
    return sync_time(lambda: [engine.step() for _ in range(new)])


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
    ap.add_argument("--quant", default="nf4", choices=["nf4", "int4"])
    ap.add_argument("--out")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda.py needs a CUDA GPU visible to torch")
    import mpt_lite

    if not mpt_lite.ops.cuda_built():
        raise SystemExit(mpt_lite.ops.NO_CUDA_BUILD)
    t0 = time.perf_counter()
    hf = build_hf(args)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = mpt_lite.MptForCausalLM.from_pretrained(d, bits=4, quant_type=args.quant, device="cuda")
    print(f"[bench] models ready in {time.perf_counter() - t0:.1f} s; "
          f"GPU memory {torch.cuda.memory_allocated() / 2**30:.2f} GiB", flush=True)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 50000, (1, 32), generator=g).cuda()
    long = torch.randint(0, 50000, (1, args.prefill), generator=g).cuda()
    rows = []
    for name, dec, pre, model in (("mpt_lite 4-bit " + args.quant, ours_decode, ours_prefill, ours),
                                  ("transformers bf16", hf_decode, hf_prefill, hf)):
        dec(model, prompt, 4), pre(model, long)  # warm-up: lazy init, kernel loading
        d = statistics.median(dec(model, prompt, args.new) for _ in range(args.repeats))
        p = statistics.median(pre(model, long) for _ in range(args.repeats))
        rows.append((name, args.new / d, args.prefill / p))
        print(f"[bench] {name}: decode {args.new / d:.1f} tok/s, prefill {args.prefill / p:.0f} tok/s", flush=True)
    gpu = torch.cuda.get_device_name(0)
    size = "quick" if args.quick else "1.3B"
    lines = [f"GPU: {gpu}; synthetic MPT {size}; batch 1; decode after a 32-token prompt ({args.new} steps), "
             f"prefill of {args.prefill} tokens; medians of {args.repeats}",
             "", "| model | decode tok/s | prefill tok/s |", "| --- | ---: | ---: |"]
    lines += [f"| {n} | {d:.1f} | {p:.0f} |" for n, d, p in rows]
    lines.append(f"| ratio (mpt_lite / bf16) | {rows[0][1] / rows[1][1]:.2f}x | {rows[0][2] / rows[1][2]:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n\n")


if __name__ == "__main__":
    main()
