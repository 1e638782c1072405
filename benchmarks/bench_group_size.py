"""Would int4 groups of 64 keep the quality at 4.25 bits per weight? (issue 12, item 5)

A plain-torch simulation, not a kernel format: the embedded default model in float32, its block
Linears replaced by the dequantized weights of int4 with group size G (32, 64, 128) and an fp16
scale per group (4 + 16/G bits per weight), scales chosen as mpt_lite's quantizer chooses them
(search over the trial divisors of the signed absmax for the least squared error, refit, round the
scale to half, codes for the rounded scale; kernels.reference.ref_search_quantize_int4 is the
G = 32 case) or by absmax alone. The tied embedding is int8 per row in every row, as load(bits=4)
holds it. Held-out perplexity on the same windows for every row; the "int4 kernels" row is
mpt_lite.load(bits=4) itself, so the G = 32 simulation can be checked against it.

    python benchmarks/bench_group_size.py                    # the whole held-out set
    python benchmarks/bench_group_size.py --max-tokens 6144  # bench_quality.py's windows
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import eval_default_model as ev  # noqa: E402
from default_model_corpus import held_out_perplexity  # noqa: E402

import mpt_lite  # noqa: E402
from mpt_lite import ops  # noqa: E402
from mpt_lite.kernels.reference import INT4_TRIALS  # noqa: E402

BLOCK_LINEARS = ("Wqkv", "out_proj", "up_proj", "down_proj")


def _fit(x: torch.Tensor, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares scale of each group's levels and the squared error it removes."""
    sxl, sll = (x * levels).sum(1), (levels * levels).sum(1)
    scale = torch.where(sll > 0, sxl / sll.clamp_min(1e-30), torch.zeros_like(sxl))
    return scale, scale * sxl


def _grouped(w: torch.Tensor, group: int) -> torch.Tensor:
    """w [N, K] as float groups of `group` weights [N * Kp / group, group], K zero-padded to Kp (a multiple)."""
    N, K = w.shape
    x = torch.zeros(N, -(-K // group) * group)
    x[:, :K] = w.float()
    return x.view(-1, group)


def _ungrouped(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """_grouped's groups back in w's shape, the padding dropped."""
    return x.view(w.shape[0], -1)[:, :w.shape[1]]


def _signed_absmax(x: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, x.abs().argmax(1, keepdim=True)).squeeze(1)


def _safe_inv(d: torch.Tensor) -> torch.Tensor:
    """1 / d, 0 where d is 0."""
    return torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))


def _levels(x: torch.Tensor, scale: torch.Tensor | None = None, inv: torch.Tensor | None = None) -> torch.Tensor:
    if inv is None:
        inv = _safe_inv(scale)
    return torch.round((x * inv[:, None]).clamp(-8, 7))


def int4_simulated(w: torch.Tensor, group: int, searched: bool) -> torch.Tensor:
    """w [N, K] -> the dequantized int4 weight with `group` weights per fp16 scale."""
    x = _grouped(w, group)
    m = _signed_absmax(x)
    scale = m / -8.0
    if searched:
        best, best_gain = None, None
        for t in INT4_TRIALS:
            inv = torch.where(m != 0, torch.full_like(m, -t) / torch.where(m != 0, m, torch.ones_like(m)),
                              torch.zeros_like(m))
            lv = _levels(x, inv=inv)
            gain = _fit(x, lv)[1]
            if best is None:
                best, best_gain = lv, gain
            else:
                better = gain > best_gain
                best, best_gain = torch.where(better[:, None], lv, best), torch.where(better, gain, best_gain)
        scale = _fit(x, _levels(x, _fit(x, best)[0]))[0]
    scale = ops.int4_half_scales(scale).float()
    return _ungrouped(_levels(x, scale) * scale[:, None], w)


def int6_simulated(w: torch.Tensor, group: int) -> torch.Tensor:
    """w [N, K] -> 6-bit codes (-32..31) with an fp16 scale per `group` weights, the scale from the signed
    absmax (its value maps to -32), as Q4_0 does at 4 bits: the candidate for the tied embedding (6 + 16/G bits)."""
    x = _grouped(w, group)
    d = (_signed_absmax(x) / -32.0).half().float()
    q = torch.round((x * _safe_inv(d)[:, None]).clamp(-32, 31))
    return _ungrouped(q * d[:, None], w)


def q4_0_simulated(w: torch.Tensor) -> torch.Tensor:
    """w [N, K] -> the dequantized weight of llama.cpp's Q4_0 (ggml's reference quantizer, quantize_row_q4_0_ref):
    groups of 32, d = signed absmax / -8 stored in fp16, codes min(15, trunc(x / d + 8.5)) with 1/d taken from the
    unrounded d, values (code - 8) * fp16(d)."""
    x = _grouped(w, 32)
    d = _signed_absmax(x) / -8.0
    codes = torch.clamp(torch.trunc(x * _safe_inv(d)[:, None] + 8.5), max=15)
    return _ungrouped((codes - 8) * d.half().float()[:, None], w)


def int4_asym_simulated(w: torch.Tensor, group: int, rounds: int = 4) -> torch.Tensor:
    """w [N, K] -> the dequantized weight of an asymmetric int4 (a scale and a minimum per group, both fp16; codes
    0..15, w = q * d + m; llama.cpp's Q4_1 idea), fitted by alternating least squares from the group's min/max:
    codes for the current (d, m), then (d, m) by linear regression of the group's values on those codes."""
    x = _grouped(w, group)
    lo, hi = x.min(1).values, x.max(1).values
    d, m = (hi - lo) / 15, lo
    for _ in range(rounds):
        q = torch.round(((x - m[:, None]) * _safe_inv(d)[:, None]).clamp(0, 15))
        qm, xm = q.mean(1), x.mean(1)
        var = ((q - qm[:, None]) ** 2).mean(1)
        d_new = torch.where(var > 0, ((q - qm[:, None]) * (x - xm[:, None])).mean(1) / var.clamp_min(1e-30), d)
        d, m = d_new, xm - d_new * qm
    d, m = d.half().float(), m.half().float()
    q = torch.round(((x - m[:, None]) * _safe_inv(d)[:, None]).clamp(0, 15))
    return _ungrouped(q * d[:, None] + m[:, None], w)


def simulated_model(model_dir: Path, group: int | None, searched: bool, embedding: str = "int8"):
    """The float model with (group given) int4-simulated block Linears and the tied embedding as
    `embedding` says: "int8" (as load(bits=4)), "int4" (both roles at int4 G=32 searched, as
    embedding_bits=4), "int8+int4 logits" (the lookup from int8, the logits from an int4 copy) or "int6-GNN"
    (both roles at 6 bits, an fp16 scale per NN: not a kernel format yet)."""
    model = mpt_lite.load(model_dir, bits=None)
    with torch.no_grad():
        wte = model.transformer.wte.weight
        w = wte.detach().clone()
        wte.copy_(int4_simulated(w, 32, True) if embedding == "int4" else
                  int6_simulated(w, int(embedding[6:])) if embedding.startswith("int6-G") else
                  ops.ref_dequantize_int8(*ops.ref_quantize_int8(w)))
        if embedding == "int8+int4 logits":
            model.lm_head = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            model.lm_head.weight.copy_(int4_simulated(w, 32, True))
        if group is not None:
            for name, mod in model.named_modules():
                if name.endswith(BLOCK_LINEARS) and isinstance(mod, torch.nn.Linear):
                    if group == "q4_0":
                        mod.weight.copy_(q4_0_simulated(mod.weight))
                    elif isinstance(group, str):  # "asymNN": a scale and a minimum per NN
                        mod.weight.copy_(int4_asym_simulated(mod.weight, int(group[4:])))
                    else:
                        mod.weight.copy_(int4_simulated(mod.weight, group, searched))
    return model


ROWS = [  # name, group (None: float blocks), searched, bits per weight of the block Linears
    ("float blocks, int8 embedding", None, True, 32.0),
    ("int4 G=32 searched (simulated)", 32, True, 4.5),
    ("int4 G=64 searched (simulated)", 64, True, 4.25),
    ("int4 G=64 absmax (simulated)", 64, False, 4.25),
    ("int4 G=128 searched (simulated)", 128, True, 4.125),
    ("int4 G=256 searched (simulated)", 256, True, 4.0625),
    ("llama.cpp Q4_0 (simulated: ggml's reference quantizer)", "q4_0", False, 4.5),
    ("int4 G=64 asymmetric, scale and min fitted (simulated; not a kernel format)", "asym64", True, 4.5),
    ("int4 G=128 asymmetric, scale and min fitted (simulated; not a kernel format)", "asym128", True, 4.25),
]
EMBEDDING_ROWS = [  # as ROWS, then the tied embedding as simulated_model takes it
    ("int4 G=32 searched, embedding int4 (embedding_bits=4)", 32, True, 4.5, "int4"),
    ("int4 G=32 searched, lookup int8, logits int4 G=32", 32, True, 4.5, "int8+int4 logits"),
    ("int4 G=64 searched, lookup int8, logits int4 G=32", 64, True, 4.25, "int8+int4 logits"),
    ("float blocks, lookup int8, logits int4 G=32", None, True, 32.0, "int8+int4 logits"),
    ("float blocks, embedding int4 (both roles)", None, True, 32.0, "int4"),
    ("float blocks, embedding int6 G=32 (both roles)", None, True, 32.0, "int6-G32"),
    ("int4 G=32 searched, embedding int6 G=32 (6.5 bits)", 32, True, 4.5, "int6-G32"),
    ("int4 G=32 searched, embedding int6 G=16 (7 bits)", 32, True, 4.5, "int6-G16"),
    ("int4 G=64 searched, embedding int6 G=32 (6.5 bits)", 64, True, 4.25, "int6-G32"),
]


KERNEL_ROWS = [  # name, load() keywords, bits per weight of the block Linears
    ("int4 kernels: load(bits=4), G=32 fp16 scales", {}, 4.5),
    ("int4 kernels: load(bits=4, embedding_bits=6), G=32, int6 embedding", {"embedding_bits": 6}, 4.5),
    ("int4 kernels: load(bits=4, group_size=64, embedding_bits=6), int6 embedding", {"group_size": 64, "embedding_bits": 6},
     4.25),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=mpt_lite.default_model_path())
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="+", default=None, metavar="SUBSTRING",
                   help="simulated rows whose name contains one of these (default: all; the float row always runs)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ops.set_num_threads(args.threads)
    stream, seq_len, _ = ev.held_out(args.model, args.max_tokens)
    base, rows = None, []

    def row(name, model, bpw):
        nonlocal base
        t0 = time.time()
        ppl, n = held_out_perplexity(model, stream, seq_len)
        base = ppl if base is None else base
        rows.append((name, bpw, ppl, 100 * (ppl / base - 1)))
        print(f"{name}: perplexity {ppl:.4f} over {n:,} tokens ({time.time() - t0:.0f}s)", file=sys.stderr)

    row("unquantized (float32)", mpt_lite.load(args.model, bits=None), 32.0)
    for name, group, searched, bpw, *embedding in ROWS + EMBEDDING_ROWS:  # embedding: as simulated_model (int8)
        if args.only and not any(o in name for o in args.only):
            continue
        row(name, simulated_model(args.model, group, searched, *embedding), bpw)
    for name, kw, bpw in KERNEL_ROWS:  # the kernel formats themselves, as load() holds them
        if not args.only or any(o in name for o in args.only):
            row(name, mpt_lite.load(args.model, bits=4, quant_type="int4", **kw), bpw)
    print("| rows | block Linears bits/weight | held-out perplexity | vs float |\n|---|---:|---:|---:|")
    for name, bpw, ppl, cost in rows:
        print(f"| {name} | {bpw:.3f} | {ppl:.4f} | {cost:+.3f}% |")


if __name__ == "__main__":
    main()
