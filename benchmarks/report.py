"""Tables, target verdicts, chart and the docs/benchmarks.md section of bench_compare.py; no
measuring here, only formatting what the run produced."""
from __future__ import annotations

import re
from pathlib import Path

MARK = "<!-- bench_compare:{tag}:{end} -->"
PAIRS = [  # (mpt_lite variant, peer, peer variant) compared in the ratio table
    ("int4", "llama.cpp", "q4_0"), ("nf4", "llama.cpp", "q4_0"), ("int8", "llama.cpp", "q8_0"),
    ("fp32", "llama.cpp", "f16"), ("int4", "transformers", "bf16"), ("nf4", "transformers", "bf16"),
    ("nf4", "transformers", "bnb-nf4"), ("int8", "transformers", "bnb-int8"), ("fp32", "transformers", "fp32"),
]
SPEED = [("prefill_tok_s", "prefill tok/s"), ("decode_tok_s", "decode tok/s"),
         ("batch8_tok_s", "batch 8 tok/s"), ("batch32_tok_s", "batch 32 tok/s")]


def _f(x, fmt="{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def results_table(rows: list[dict], bandwidth: float) -> str:
    out = ["| library | format | load s | peak RSS MB | weights MB | prefill tok/s | decode tok/s | batch 8 tok/s "
           "| batch 32 tok/s | decode GB/s (% of read bw) | KL vs fp32 | top-1 agree |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        wb = r.get("weight_bytes")
        dec = r.get("decode_tok_s")
        gbs = None if wb is None or dec is None else wb * dec / 1e9
        bw = "-" if gbs is None else f"{gbs:.1f} ({gbs / bandwidth:.0%})"
        out.append(f"| {r['peer']} | {r['variant']} | {_f(r.get('load_s'), '{:.2f}')} | {_f(r.get('peak_rss_load_mb'), '{:.0f}')}"
                   f" | {_f(None if wb is None else wb / 2**20, '{:.0f}')} | " +
                   " | ".join(_f(r.get(k)) for k, _ in SPEED) +
                   f" | {bw} | {_f(r.get('kl'), '{:.2e}')} | {_f(r.get('top1'), '{:.1%}')} |")
    return "\n".join(out)


def _get(rows, peer, variant):
    return next((r for r in rows if r["peer"] == peer and r["variant"] == variant and "decode_tok_s" in r), None)


def ratio_table(rows: list[dict]) -> str:
    out = ["| mpt_lite vs peer | " + " | ".join(n for _, n in SPEED) + " |", "|---|" + "---:|" * len(SPEED)]
    for ours, peer, pv in PAIRS:
        a, b = _get(rows, "mpt_lite", ours), _get(rows, peer, pv)
        if a is None or b is None:
            continue
        cells = [f"{a[k] / b[k]:.2f}x" if a.get(k) and b.get(k) else "-" for k, _ in SPEED]
        out.append(f"| mpt_lite {ours} / {peer} {pv} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def targets(rows: list[dict], bandwidth: float | None = None) -> list[str]:
    """One line per target of the CPU speed issues (12: decode, 13: prefill and batches): met or
    missed, and by how much."""
    lines = []

    def best(variants, key):
        cands = [(r[key], r["variant"]) for v in variants if (r := _get(rows, "mpt_lite", v)) and r.get(key)]
        return max(cands) if cands else None

    def verdict(name, ratio, goal, detail):
        v = "**met**" if ratio >= goal else f"**missed** (needs {goal / ratio:.2f}x more)"
        lines.append(f"- {name}: {ratio:.2f}x {detail}(target >= {goal}x): {v}")

    def check(name, ours, peer, key, goal):
        b = _get(rows, *peer)
        if ours is None or b is None or not b.get(key):
            lines.append(f"- {name}: not measured (a side was skipped)")
            return
        verdict(name, ours[0] / b[key], goal, f"with mpt_lite {ours[1]} ")

    check("best 4-bit decode vs llama.cpp Q4_0", best(["int4", "nf4"], "decode_tok_s"), ("llama.cpp", "q4_0"),
          "decode_tok_s", 1.25)
    check("nf4 decode vs int4", best(["nf4"], "decode_tok_s"), ("mpt_lite", "int4"), "decode_tok_s", 0.9)
    check("int8 decode vs llama.cpp Q8_0", best(["int8"], "decode_tok_s"), ("llama.cpp", "q8_0"), "decode_tok_s", 1.15)
    check("best 4-bit prefill vs llama.cpp Q4_0", best(["int4", "nf4"], "prefill_tok_s"), ("llama.cpp", "q4_0"),
          "prefill_tok_s", 2.0)
    check("best 4-bit prefill vs transformers bf16", best(["int4", "nf4"], "prefill_tok_s"), ("transformers", "bf16"),
          "prefill_tok_s", 1.5)
    for v in ("int8", "nf4", "int4"):
        r = _get(rows, "mpt_lite", v)
        if r is None:
            continue
        if bandwidth and r.get("weight_bytes"):
            frac = r["weight_bytes"] * r["decode_tok_s"] / 1e9 / bandwidth
            verdict(f"{v} decode bytes/s vs read bandwidth", frac, 0.95, "")
        for key, goal in (("batch8_tok_s", 5), ("batch32_tok_s", 10)):
            if r.get(key):
                verdict(f"{v} {key.split('_')[0]} throughput vs batch 1", r[key] / r["decode_tok_s"], goal, "")
    for v in ("nf4", "int4"):
        r = _get(rows, "mpt_lite", v)
        if r is None:
            continue
        limit = 1.2 * r["weight_bytes"] / 2**20 + 1024
        ok = r["peak_rss_load_mb"] <= limit
        lines.append(f"- load at bits=4 ({v}): peak RSS {r['peak_rss_load_mb']:.0f} MB vs limit 1.2 x "
                     f"{r['weight_bytes'] / 2**20:.0f} MB + 1024 MB = {limit:.0f} MB: "
                     + ("**met**" if ok else f"**missed** by {r['peak_rss_load_mb'] - limit:.0f} MB"))
    return lines


def chart(rows: list[dict], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart skipped: matplotlib is not installed (pip install matplotlib)")
        return None
    done = [r for r in rows if "decode_tok_s" in r]
    labels = [f"{r['peer']}\n{r['variant']}" for r in done]
    colors = {"mpt_lite": "tab:blue", "llama.cpp": "tab:orange", "transformers": "tab:green"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, (key, name) in zip(axes, [("prefill_tok_s", "prefill tok/s (512-token prompt)"),
                                      ("decode_tok_s", "decode tok/s (batch 1)"),
                                      ("batch8_tok_s", "decode throughput, batch 8 (tok/s)")]):
        ax.bar(range(len(done)), [r.get(key) or 0 for r in done], color=[colors.get(r["peer"], "gray") for r in done])
        ax.set_xticks(range(len(done)), labels, rotation=60, fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def update_doc(doc: Path, heading: str, section: str, tag: str) -> None:
    """Replaces this run's block of the doc (between its markers, one block per model size), or
    appends the heading (once) and the block; the rest of the doc is kept."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    begin, end = MARK.format(tag=tag, end="begin"), MARK.format(tag=tag, end="end")
    block = f"{begin}\n{section.rstrip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        if heading.splitlines()[0] not in text:
            text = text.rstrip() + "\n\n" + heading.rstrip()
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
