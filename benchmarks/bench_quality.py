"""Quality of each weight format on a trained model: held-out perplexity, cost over float and bits
per weight, every row scored on the same windows of the same held-out tokens, so that peers'
rows can stand beside mpt_lite's.

    python benchmarks/bench_quality.py                        # the embedded default model
    python benchmarks/bench_quality.py --model /tmp/wider     # another train_default_model.py run

Each peer is a function (model_dir, stream, seq_len) -> rows, a row being a dict with name,
perplexity, cost_percent (over the first row, the unquantized model), bits_per_weight and bytes
(scripts/eval_default_model.py's rows). Peers: mpt_lite (every format) and llama.cpp (the
model converted by our GGUF converter, quantized by llama.cpp's own quantizer to Q8_0, Q4_0 and
Q4_K_M, scored by llama-cpp-python on the same windows; skipped with the reason when
llama-cpp-python is not installed). Each peer's cost is over its own float row (mpt_lite: float32,
llama.cpp: F16). bits/weight counts the matrices (block Linears and the tied embedding); block
Linears bits/weight the block matrices alone (int4: 4.5 with fp16 group scales, as Q4_0)."""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import eval_default_model as ev  # noqa: E402

import mpt_lite  # noqa: E402


def mpt_lite_rows(model_dir: Path, stream: list[int], seq_len: int) -> list[dict]:
    """Float, int8, int4 and nf4 (the tied embedding at int8 and, with embedding_bits=4, at 4 bits)."""
    rows = ev.ROWS["default"] + [r for r in ev.ROWS["ablation"] if r[2] == "searched"]
    return [dict(r, peer="mpt_lite") for r in ev.evaluate(model_dir, rows, stream, seq_len)]


def _gguf_bits_per_weight(path: Path, blocks_only: bool = False) -> float:
    """Bits per weight of the matrices (blocks_only: without the token embedding / output matrix)."""
    from gguf import GGUFReader

    mats = [t for t in GGUFReader(str(path)).tensors if len(t.shape) == 2 or t.name == "token_embd.weight"]
    mats = [t for t in mats if int(t.n_elements) > max(int(d) for d in t.shape)]  # matrices, not vectors
    if blocks_only:
        mats = [t for t in mats if t.name.startswith("blk.")]
    return 8.0 * sum(int(t.n_bytes) for t in mats) / sum(int(t.n_elements) for t in mats)


def _gguf_perplexity(path: Path, stream: list[int], seq_len: int, threads: int) -> tuple[float, int]:
    import llama_cpp
    import numpy as np

    # one token per llama_decode: llama-cpp-python 0.3.36 as built here crashes on batched Q8_0/Q4_0
    # evaluation (its GEMM path) but not on single tokens; the logits are the same either way
    llm = llama_cpp.Llama(str(path), n_ctx=seq_len, n_batch=1, n_ubatch=1, n_threads=threads,
                          n_threads_batch=threads, logits_all=True, verbose=False)
    total, count = 0.0, 0
    for i in range(len(stream) // seq_len):
        window = stream[i * seq_len:(i + 1) * seq_len]
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[: seq_len - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= float(logp[np.arange(seq_len - 1), window[1:]].sum())
        count += seq_len - 1
    llm.close()
    return math.exp(total / count), count


def llama_cpp_rows(model_dir: Path, stream: list[int], seq_len: int, threads: int = 2) -> list[dict]:
    try:
        import llama_cpp  # noqa: F401
        from convert_gguf import convert, quantize
    except ImportError as e:
        return [{"name": "llama.cpp", "perplexity": None, "skipped": f"llama-cpp-python is not installed ({e})"}]
    rows, base = [], None
    with tempfile.TemporaryDirectory() as d:
        f16 = convert(model_dir, Path(d) / "model-f16.gguf")
        paths = {"F16": f16}  # every file first: quantizing while a model is loaded can crash
        for name in ("Q8_0", "Q4_0", "Q4_K_M"):
            paths[name] = quantize(f16, Path(d) / f"model-{name}.gguf", name.lower(), threads)
        for name, path in paths.items():
            t0 = time.time()
            ppl, n = _gguf_perplexity(path, stream, seq_len, threads)
            base = ppl if name == "F16" else base
            rows.append({"name": f"llama.cpp {name}", "perplexity": ppl, "peer": "llama.cpp",
                         "cost_percent": None if name == "F16" else 100 * (ppl / base - 1),
                         "bits_per_weight": _gguf_bits_per_weight(path),
                         "block_bits_per_weight": _gguf_bits_per_weight(path, blocks_only=True),
                         "bytes": path.stat().st_size, "tokens": n})
            print(f"llama.cpp {name}: perplexity {ppl:.3f} over {n:,} tokens ({time.time() - t0:.0f}s)", file=sys.stderr)
    return rows


PEERS = [mpt_lite_rows, llama_cpp_rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=mpt_lite.default_model_path())
    p.add_argument("--max-tokens", type=int, default=None, help="score at most this many held-out tokens")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from mpt_lite import kernels

    kernels.set_num_threads(args.threads)
    stream, seq_len, n_files = ev.held_out(args.model, args.max_tokens)
    print(f"{args.model}: {n_files} held-out files, {len(stream):,} tokens, windows of {seq_len}", file=sys.stderr)
    rows = [row for peer in PEERS for row in peer(args.model, stream, seq_len)]
    print(ev.markdown(rows))


if __name__ == "__main__":
    main()
