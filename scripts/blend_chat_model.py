#!/usr/bin/env python
"""Blends the chat fine-tune with the base model it started from: every weight becomes
(1 - alpha) * base + alpha * fine-tuned (weight interpolation, as WiSE-FT does), which keeps more of
the base's plain-code behaviour than the fine-tune alone. No training: the fine-tune's record is
kept and a "blend" entry added to its chat_finetune section.

    python scripts/blend_chat_model.py --finetuned build/chat_model --alpha 0.7 --out build/chat_blend
    python scripts/blend_chat_model.py --finetuned build/chat_model/checkpoints/step600.safetensors ...
    python scripts/eval_chat_model.py --model build/chat_blend --record
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from default_model_corpus import held_out_perplexity, split_files, stdlib_files, token_stream  # noqa: E402
from mpt_lite import MptForCausalLM  # noqa: E402

SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, default=ROOT / "build" / "base_model", help="the base model folder")
    p.add_argument("--finetuned", type=Path, default=ROOT / "build" / "chat_model",
                   help="the fine-tune: its folder (finetune_chat_model.py --out) or one of its checkpoints/*.safetensors")
    p.add_argument("--alpha", type=float, required=True, help="weight of the fine-tune, in (0, 1]")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "chat_blend")
    p.add_argument("--seed", type=int, default=0, help="the held-out files of the perplexity (the base run's split)")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no weights at {file}")
    return load_file(str(file))


def main() -> None:
    args = parse_args()
    if not 0 < args.alpha <= 1:
        raise SystemExit(f"--alpha must be in (0, 1], got {args.alpha}")
    torch.set_num_threads(args.threads)
    info_path = (args.finetuned if args.finetuned.is_dir() else args.finetuned.parent.parent) / "training_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if "chat_finetune" not in info:
        raise SystemExit(f"{info_path} is missing or has no chat_finetune section: blend the folder of a finished "
                         "finetune_chat_model.py run (or one of its checkpoints)")
    base, tuned = weights_of(args.base), weights_of(args.finetuned)
    if base.keys() != tuned.keys() or any(base[k].shape != tuned[k].shape for k in base):
        raise SystemExit(f"{args.finetuned} and {args.base} do not hold the same tensors: not a fine-tune of this base")
    mixed = {k: ((1 - args.alpha) * base[k].float() + args.alpha * tuned[k].float()).to(base[k].dtype).contiguous()
             for k in base}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in SIDE_FILES:
        shutil.copyfile(args.base / name, args.out / name)
    save_file(mixed, str(args.out / "model.safetensors"), metadata={"format": "pt"})

    info["chat_finetune"].pop("chat_eval", None)  # measured on the unblended weights
    from tokenizers import Tokenizer
    bpe = Tokenizer.from_file(str(args.base / "tokenizer.json"))
    held_ids = token_stream(bpe, split_files(stdlib_files(), args.seed)[1], bpe.token_to_id("<|endoftext|>"))
    t0 = time.time()
    ppl, _ = held_out_perplexity(MptForCausalLM.from_pretrained(args.out, dtype=torch.float32), held_ids, 256)
    before = info["chat_finetune"]["held_out_perplexity_before"]
    step = None if args.finetuned.is_dir() else args.finetuned.stem
    info["chat_finetune"]["blend"] = {
        "script": "scripts/blend_chat_model.py", "alpha": args.alpha, "finetuned_weights": step or "the kept checkpoint",
        "rule": "(1 - alpha) * base + alpha * fine-tuned, every tensor",
        "held_out_perplexity": round(ppl, 4), "held_out_perplexity_change": round(ppl / before - 1, 4)}
    (args.out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"saved {args.out}: alpha {args.alpha}, held-out code perplexity {ppl:.3f} "
          f"({100 * (ppl / before - 1):+.2f}% vs {before}) ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
