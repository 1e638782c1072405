"""save_pretrained: a model -> config.json, model.safetensors (quantized codes as they are) and
the tokenizer files, written so that a failed save never destroys what was there."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..config import CONFIG_NAME, check_save_folder
from ..quant import held_state_dict, quant_metadata
from .loading import WEIGHT_FILE_PATTERNS

# What a save refuses to replace unless the folder holds an MPT checkpoint already. Not the tokenizer's files:
# tokenizer.save_pretrained(d) then model.save_pretrained(d) is the usual transformers order, and the model's
# own tokenizer is what it writes there.
SAVED_NAMES = (CONFIG_NAME, "model.safetensors")


def save_pretrained(model: nn.Module, save_directory: Any) -> None:
    """Writes config.json and model.safetensors (the tied wte once, no lm_head; quantized codes as held in
    memory, Linears in the rows8 layout where this machine holds them so, named in the metadata).

    Files are written beside their final name and renamed into place, so a failed save leaves the
    previous ones intact; a folder holding another checkpoint's weight files is refused."""
    from safetensors.torch import save_file

    path = check_save_folder(save_directory, SAVED_NAMES)
    path.mkdir(parents=True, exist_ok=True)
    others = sorted({p.name for pat in WEIGHT_FILE_PATTERNS for p in path.glob(pat)} - {"model.safetensors"})
    if others:
        raise FileExistsError(f"{path} already holds other weight files ({', '.join(others)}); "
                              "save into an empty folder")
    state = {k: v.detach().contiguous().cpu() for k, v in held_state_dict(model).items()}
    metadata = {"format": "pt", **(quant_metadata(model) or {})}
    tmp = path / ".model.safetensors.tmp"
    save_file(state, str(tmp), metadata=metadata)
    config_tmp = path / ".config.json.tmp"
    config_tmp.write_text(model.config.to_json_string())
    os.replace(tmp, path / "model.safetensors")
    os.replace(config_tmp, path / CONFIG_NAME)
    if getattr(model, "tokenizer", None) is not None:
        model.tokenizer.save_pretrained(path)
