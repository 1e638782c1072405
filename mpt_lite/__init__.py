"""mpt_lite: fast, quantized, local inference of MosaicML MPT models."""
from __future__ import annotations

import os
from typing import Any

# torch's OpenMP workers spin for a while after every parallel torch op (OMP_WAIT_POLICY unset); the
# extension's kernels run on their own pool right after, and on a machine with few cores the spinning
# takes those cores from it (2 cores, the 1.3B int4: forward() of a 512-token prompt 71-78 -> 85 tok/s,
# its past_key_values decode loop 9-12 -> 14 tok/s). OpenMP reads this once, when torch is first
# imported: it takes effect only if mpt_lite is imported first, and a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from . import ops  # noqa: F401  (the old path of mpt_lite.kernels; `mpt_lite.ops.x` keeps working)
from .config import MptConfig
from .model import (
    TASKS,
    MptCache,
    MptForCausalLM,
    MptForQuestionAnswering,
    MptForSequenceClassification,
    MptForTokenClassification,
    MptModel,
    MptPreTrainedModel,
)
from .runtime.engine import Engine
from .text.tokenizer import MptTokenizer

__version__ = "0.1.0"

__all__ = [
    "load", "MptConfig", "MptModel", "MptForCausalLM", "MptForSequenceClassification",
    "MptForTokenClassification", "MptForQuestionAnswering", "MptPreTrainedModel", "MptTokenizer",
    "MptCache", "Engine", "default_model_path",
]


def default_model_path():
    """The folder of the small MPT that ships inside the package."""
    from pathlib import Path

    return Path(__file__).resolve().parent / "default_model"


def load(name_or_path: Any = None, bits: int | None = 4, task: str = "causal-lm", device: Any = "cpu",
         **kw: Any) -> MptPreTrainedModel:
    """A ready model (with ``model.tokenizer`` when the checkpoint has one).

    name_or_path: a folder, a hub id ("mosaicml/mpt-7b") or an alias ("mpt-7b"); None loads the
    embedded default model. bits: 4 (default; quant_type "int4" or "nf4", the tied embedding at
    int8 unless embedding_bits=4, or 6: int6 on the CPU), 8 or None (unquantized). task: "base", "causal-lm",
    "sequence-classification", "token-classification" or "question-answering"."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if name_or_path is None:
        name_or_path = default_model_path()
        if not (name_or_path / "config.json").is_file():
            raise FileNotFoundError(f"the embedded default model is missing from {name_or_path}")
    kw.setdefault("dtype", torch.float32)
    return TASKS[task].from_pretrained(name_or_path, bits=bits, device=device, **kw)
