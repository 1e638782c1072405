"""from_pretrained / save_pretrained: checkpoint files -> model and back.

The model is built on the meta device (no memory, no random init) and each tensor is moved
into place as the checkpoint streams it, so the whole float model is never held twice."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import iter_tensors, resolve_checkpoint, weight_files
from .config import CONFIG_NAME, MptConfig

HEAD_PREFIXES = ("score.", "classifier.", "qa_outputs.", "lm_head.")
WEIGHT_FILE_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                        "pytorch_model.bin.index.json")
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_device(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but torch sees no CUDA GPU on this machine")
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return dev


def load_pretrained(cls, name_or_path: Any, bits: int | None = None, quant_type: str | None = None,
                    dtype: torch.dtype = torch.float32, device: Any = "cpu", **config_overrides: Any):
    if bits is not None:
        raise ValueError(f"bits={bits!r} is not supported yet: use bits=None (unquantized)")
    if quant_type is not None:
        raise ValueError("quant_type is only meaningful with bits=4")
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
    dev = check_device(device)
    folder = resolve_checkpoint(name_or_path)
    config = MptConfig.from_json_file(folder / CONFIG_NAME, **config_overrides)
    files = weight_files(folder)
    with torch.device("meta"):
        model = cls(config)
    params = dict(model.named_parameters())
    is_base = not hasattr(model, "transformer")
    seen: set[str] = set()
    unexpected: list[str] = []
    unused_heads: list[str] = []
    for key, tensor in iter_tensors(files):
        name = _model_key(key, is_base)
        if name not in params:
            if name.startswith(HEAD_PREFIXES) or (is_base and key.startswith(HEAD_PREFIXES)):
                if not (name == "lm_head.weight" and config.tie_word_embeddings):
                    unused_heads.append(key)
            else:
                unexpected.append(key)
            continue
        target = params[name]
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(f"{key}: the checkpoint holds shape {tuple(tensor.shape)}, "
                             f"the config expects {tuple(target.shape)}")
        if not tensor.is_floating_point():
            raise TypeError(f"{key}: expected floating-point weights, found {tensor.dtype}")
        _set_param(model, name, tensor.to(device=dev, dtype=dtype, copy=True))
        seen.add(name)
        del tensor
    if unexpected:
        raise KeyError(f"unexpected tensors in {folder} (the config does not describe them): "
                       + ", ".join(sorted(unexpected)))
    missing = [n for n in params if n not in seen]
    missing_backbone = [n for n in missing if not n.startswith(HEAD_PREFIXES)]
    if missing_backbone:
        raise KeyError(f"tensors missing from {folder}: " + ", ".join(missing_backbone))
    if missing:
        warnings.warn(f"{', '.join(missing)} not in the checkpoint: newly initialised; train the head before use",
                      stacklevel=3)
        _init_missing(model, missing, dev, dtype)
    if unused_heads:
        warnings.warn(f"checkpoint tensors not used by {cls.__name__}: {', '.join(unused_heads)}", stacklevel=3)
    model.eval()
    model.requires_grad_(False)
    _attach_tokenizer(model, folder)
    return model


def _model_key(key: str, is_base: bool) -> str:
    if is_base:
        return key[len("transformer."):] if key.startswith("transformer.") else key
    if key.startswith(HEAD_PREFIXES) or key.startswith("transformer."):
        return key
    return "transformer." + key  # a checkpoint of the bare MptModel


def _set_param(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    owner._parameters[attr] = nn.Parameter(value, requires_grad=False)


def _init_missing(model: nn.Module, names: list[str], dev: torch.device, dtype: torch.dtype) -> None:
    std = model.config.initializer_range
    gen = torch.Generator().manual_seed(0)
    for name in names:
        shape = dict(model.named_parameters())[name].shape
        if name.endswith("bias"):
            value = torch.zeros(shape)
        else:
            value = torch.randn(shape, generator=gen) * std
        _set_param(model, name, value.to(device=dev, dtype=dtype))


def _attach_tokenizer(model: nn.Module, folder: Path) -> None:
    from .tokenizer import MptTokenizer

    if (folder / "tokenizer.json").is_file():
        model.tokenizer = MptTokenizer.from_pretrained(folder)


def save_pretrained(model: nn.Module, save_directory: Any) -> None:
    """Writes config.json and model.safetensors (the tied wte once, no lm_head).

    Files are written beside their final name and renamed into place, so a failed save leaves the
    previous ones intact; a folder holding another checkpoint's weight files is refused."""
    from safetensors.torch import save_file

    path = Path(save_directory)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    others = sorted({p.name for pat in WEIGHT_FILE_PATTERNS for p in path.glob(pat)} - {"model.safetensors"})
    if others:
        raise FileExistsError(f"{path} already holds other weight files ({', '.join(others)}); "
                              "save into an empty folder")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path / ".model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    config_tmp = path / ".config.json.tmp"
    config_tmp.write_text(model.config.to_json_string())
    os.replace(tmp, path / "model.safetensors")
    os.replace(config_tmp, path / CONFIG_NAME)
    if getattr(model, "tokenizer", None) is not None:
        model.tokenizer.save_pretrained(path)
