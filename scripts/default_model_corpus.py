"""The corpus of the embedded default model: this Python's own standard library sources.

Shared by train_default_model.py, finetune_chat_model.py and the eval scripts so all see the same held-out files."""
from __future__ import annotations

import random
import sysconfig
from pathlib import Path

# Folders of the stdlib that hold test suites, not library code.
EXCLUDED_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
HELD_OUT_FRACTION = 0.05


def stdlib_files() -> list[Path]:
    """Every .py file of the standard library outside test folders and site-packages, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"the standard library folder {root} does not exist")
    files = sorted(p for p in root.rglob("*.py")
                   if not EXCLUDED_PARTS.intersection(p.relative_to(root).parts[:-1]) and p.is_file())
    if not files:
        raise FileNotFoundError(f"no .py files under {root}")
    return files


def split_files(files: list[Path], seed: int) -> tuple[list[Path], list[Path]]:
    """(train, held_out): a seeded shuffle of the files, HELD_OUT_FRACTION of them held out."""
    order = list(files)
    random.Random(seed).shuffle(order)
    n_held = max(1, round(len(order) * HELD_OUT_FRACTION))
    return sorted(order[n_held:]), sorted(order[:n_held])


def read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def token_stream(tokenizer, files: list[Path], eos_id: int) -> list[int]:
    """The files encoded one after another, each followed by the end-of-text token (as in pretraining).

    tokenizer: a `tokenizers.Tokenizer`."""
    ids: list[int] = []
    for enc in tokenizer.encode_batch([read_text(f) for f in files], add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eos_id)
    return ids


def held_out_perplexity(model, stream: list[int], seq_len: int, batch: int = 16) -> tuple[float, int]:
    """exp(mean next-token loss) over non-overlapping windows of seq_len tokens; also the token count."""
    import math

    import torch
    import torch.nn.functional as F

    n_windows = len(stream) // seq_len
    if n_windows == 0:
        raise ValueError(f"the held-out stream ({len(stream)} tokens) is shorter than one window of {seq_len}")
    data = torch.tensor(stream[: n_windows * seq_len], dtype=torch.long).view(n_windows, seq_len)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i in range(0, n_windows, batch):
            x = data[i:i + batch]
            logits = model(input_ids=x).logits.float()
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                   reduction="sum")
            total += float(loss)
            count += x[:, 1:].numel()
    model.train(was_training)
    return math.exp(total / count), count


def bf16_emulated_note() -> str | None:
    """What the training scripts print before a bf16-autocast run on a CPU that would emulate it, else None."""
    from mpt_lite.kernels import cpu_features
    feats = cpu_features()
    if feats.get("amx_bf16") or feats.get("avx512bf16"):
        return None
    return ("note: this CPU has neither AMX nor AVX-512 BF16, so bf16 autocast is emulated and slow (a step took "
            "42 s against 1.2 s in float32 on a Zen 3); --no-bf16 trains in float32")

