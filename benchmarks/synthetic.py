"""Synthetic MPT checkpoints in the hub layout (config.json, bf16 shards + index, no lm_head: the
head is tied to transformer.wte), with a fixed seed and weights small enough (std 0.02, layer-norm
weights 1) that activations stay finite in every format.

    python benchmarks/synthetic.py 125m  /tmp/mpt-125m
    python benchmarks/synthetic.py 1.3b  /tmp/mpt-1.3b --format bin

The config.json is the real mosaicml/mpt-7b one with the dimensions replaced (tests/checkpoints.py
holds those extra fields). A folder that already holds a finished checkpoint of the same size and
seed is reused (a stamp file records them)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from checkpoints import tiny_config, write_config  # noqa: E402  (the hub config fields, shared with the tests)

SIZES = {
    "125m": dict(d_model=768, n_heads=12, n_layers=12, vocab_size=50432),
    "1.3b": dict(d_model=2048, n_heads=16, n_layers=24, vocab_size=50432),
}
STAMP = ".synthetic.json"


def config_for(size: str, max_seq_len: int = 2048) -> dict:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {sorted(SIZES)}")
    return tiny_config(**SIZES[size], max_seq_len=max_seq_len, expansion_ratio=4)


def _layer_tensors(cfg: dict, i: int, g: torch.Generator, std: float) -> dict[str, torch.Tensor]:
    d = cfg["d_model"]
    h = 4 * d
    p = f"transformer.blocks.{i}."

    def w(*shape):
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    return {
        p + "norm_1.weight": torch.ones(d, dtype=torch.bfloat16),
        p + "attn.Wqkv.weight": w(3 * d, d),
        p + "attn.out_proj.weight": w(d, d),
        p + "norm_2.weight": torch.ones(d, dtype=torch.bfloat16),
        p + "ffn.up_proj.weight": w(h, d),
        p + "ffn.down_proj.weight": w(d, h),
    }


def write_checkpoint(folder: str | os.PathLike, size: str, seed: int = 0, fmt: str = "safetensors",
                     layers_per_shard: int = 8, std: float = 0.02) -> Path:
    """Writes (or reuses) the checkpoint; returns the folder."""
    if fmt not in ("safetensors", "bin"):
        raise ValueError(f"format must be 'safetensors' or 'bin', got {fmt!r}")
    folder = Path(folder)
    key = {"size": size, "seed": seed, "format": fmt, "std": std}
    stamp = folder / STAMP
    if stamp.exists() and json.loads(stamp.read_text()) == key:
        return folder
    cfg = config_for(size)
    folder.mkdir(parents=True, exist_ok=True)
    for old in list(folder.glob("*.safetensors")) + list(folder.glob("*.bin")):
        old.unlink()
    g = torch.Generator().manual_seed(seed)
    L = cfg["n_layers"]
    groups = [list(range(s, min(s + layers_per_shard, L))) for s in range(0, L, layers_per_shard)]
    n = len(groups)
    weight_map, total = {}, 0
    for k, layers in enumerate(groups, start=1):
        part: dict[str, torch.Tensor] = {}
        if k == 1:
            part["transformer.wte.weight"] = (torch.randn(cfg["vocab_size"], cfg["d_model"], generator=g)
                                              * std).to(torch.bfloat16)
        for i in layers:
            part.update(_layer_tensors(cfg, i, g, std))
        if k == n:
            part["transformer.norm_f.weight"] = torch.ones(cfg["d_model"], dtype=torch.bfloat16)
        if fmt == "safetensors":
            from safetensors.torch import save_file

            name = f"model-{k:05d}-of-{n:05d}.safetensors"
            save_file(part, str(folder / name), metadata={"format": "pt"})
        else:
            name = f"pytorch_model-{k:05d}-of-{n:05d}.bin"
            torch.save(part, folder / name)
        weight_map.update({t: name for t in part})
        total += sum(v.numel() * v.element_size() for v in part.values())
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    write_config(folder, cfg)
    stamp.write_text(json.dumps(key))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("size", choices=sorted(SIZES))
    ap.add_argument("folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=["safetensors", "bin"], default="safetensors")
    args = ap.parse_args()
    print(write_checkpoint(args.folder, args.size, args.seed, args.format))


if __name__ == "__main__":
    main()
