"""from_pretrained: checkpoint files -> a model of the class it is given (saving.py goes back).

The model is built on the meta device (no memory, no random init) and each tensor is moved
into place as the checkpoint streams it, so the whole float model is never held twice."""
from __future__ import annotations

import contextlib

import json
import os
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import kernels
from ..kernels import huge_pages
from .checkpoint import iter_tensors, resolve_checkpoint, safetensors_metadata, weight_files
from .placement import start_placement
from .load_options import check_overrides, dtype_from_config, take_torch_dtype
from ..config import CONFIG_NAME, MissingKeyError, MptConfig
from ..quant import EMBEDDING_ONLY, FORMAT_VERSION, QUANT_TYPES
from ..quant import (FOUR_BIT, QuantEmbedding, QuantLinear, check_embedding_bits, embedding_quant_type, quant_type_for,
                     quantized_modules)

HEAD_PREFIXES = ("score.", "classifier.", "qa_outputs.", "lm_head.")
WEIGHT_FILE_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                        "pytorch_model.bin.index.json")
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_device(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: {e}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no GPU or driver is visible"
            raise ValueError(f"device='cuda' was requested but torch sees no CUDA GPU on this machine ({why}); "
                             f"mpt_lite's CUDA kernels are {'built' if kernels.cuda_built() else 'not built'}")
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return dev


def load_pretrained(cls, name_or_path: Any, bits: int | None = None, quant_type: str | None = None,
                    dtype: torch.dtype = torch.float32, device: Any = "cpu", embedding_bits: int | None = None,
                    group_size: int | None = None, **config_overrides: Any):
    dtype, auto_dtype = take_torch_dtype(dtype, config_overrides)
    check_overrides(config_overrides)
    if bits is None and quant_type is not None:
        raise ValueError("quant_type is only meaningful with bits=8 or bits=4")
    qtype = None if bits is None else quant_type_for(bits, quant_type)
    if bits is not None:
        check_embedding_bits(embedding_bits, qtype)
    if group_size is not None:
        kernels.check_int4_group(group_size)
        if bits is not None and qtype != "int4":
            raise ValueError(f"group_size (in_features per scale) applies to quant_type 'int4' only, not {qtype}")
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
    dev = check_device(device)
    huge_page_mode = huge_pages.huge_page_mode()  # a bad MPT_LITE_HUGE_PAGES fails before the work, not after
    folder = resolve_checkpoint(name_or_path)
    config = MptConfig.from_json_file(folder / CONFIG_NAME, **config_overrides)
    if auto_dtype:
        dtype = dtype_from_config(config)
        if dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"torch_dtype='auto': {folder} says {dtype}, not one of {SUPPORTED_DTYPES}")
    files = weight_files(folder)
    stored, blocksize, stored_formats, version = _stored_quantization(files)
    stored_rows8 = _stored_rows8(files) if stored_formats else set()
    if stored is not None:
        # Weights saved quantized load as saved: quantizing codes again would only lose more. bits=4 alone is met
        # by either 4-bit format. Other bits alone (load()'s default of 4 on an int8 folder) are overridden with a
        # warning, as transformers does when a checkpoint's quantization_config differs from the one passed; a
        # quant_type that names another format is an error.
        if qtype is not None and qtype != stored:
            if quant_type is not None:
                raise ValueError(f"{folder} holds {stored} weights; they cannot be loaded as {qtype} "
                                 f"(pass bits=None to use them as saved)")
            if not (bits == 4 and stored in FOUR_BIT):
                warnings.warn(f"{folder} holds {stored} weights; loading them as saved, not at bits={bits} "
                              f"(quantizing them again would lose precision)", stacklevel=3)
        qtype = stored
    if group_size is not None and qtype != "int4":
        raise ValueError(f"group_size applies to int4 weights; {folder} is loaded as "
                         f"{qtype or 'unquantized (pass bits=4)'}")
    stored_group = _stored_group_size(files) if stored_formats else kernels.INT4_GROUP
    if stored is not None and group_size is not None and group_size != stored_group:
        raise ValueError(f"{folder} holds int4 weights with group_size {stored_group}; they cannot be "
                         f"loaded with group_size={group_size} (pass group_size=None to use them as saved)")
    group = group_size or stored_group
    emb_qtype = embedding_quant_type(qtype, embedding_bits)
    if dev.type != "cpu" and "int6" in (emb_qtype, *stored_formats.values()):
        raise ValueError(f"the tied embedding at int6 ({'embedding_bits=6' if emb_qtype == 'int6' else str(folder)}) "
                         "is a CPU format; on CUDA use embedding_bits=8 (the default) or 4")
    if qtype is not None and dev.type == "cuda" and not kernels.cuda_built():
        raise ValueError(f"device='cuda' with quantized weights ({qtype}) needs mpt_lite's CUDA kernels, but "
                         f"{kernels.NO_CUDA_BUILD}")
    with torch.device("meta"), _no_init():
        if qtype is None:
            model = cls(config)
        else:
            model = cls(config, linear=partial(QuantLinear, quant_type=qtype, blocksize=blocksize, group_size=group))
            base = model.transformer_model()
            # group_size is the block Linears' (and an untied lm_head's): an int4 tied embedding keeps groups of
            # 32, which its row-layout logits kernels read as they are (wider groups would be widened per token)
            base.wte = QuantEmbedding(config.vocab_size, config.d_model, emb_qtype, blocksize, dtype)
            if isinstance(getattr(model, "lm_head", None), QuantLinear):  # untied: as the embedding
                model.lm_head.set_format(emb_qtype)
            _apply_stored_formats(model, stored_formats, embedding_bits, folder)
    params = dict(model.named_parameters())
    qmods = quantized_modules(model)
    is_base = not hasattr(model, "transformer")
    seen: set[str] = set()
    unexpected: list[str] = []
    unused_heads: list[str] = []
    pieces: dict[str, dict[str, torch.Tensor]] = {}
    # A model saved by mpt_lite holds its codes in the kernels' layout: map them, copy nothing.
    mapped = bool(stored_formats)  # only mpt_lite's own files name their formats
    # Weights go into one huge-page mapping as each module's become final (hub/placement.py).
    placement = start_placement(model, dev, mapped, huge_page_mode)
    stream = iter_tensors(files, reuse_buffer=bool(qmods), mapped=mapped)
    if qmods:
        stream = _progress(stream, len(params) + len(qmods), "loading" if stored else f"quantizing ({qtype})")
    for key, tensor in stream:
        name = _model_key(key, is_base)
        owner, _, piece = name.rpartition(".")
        if owner in qmods or (piece != "bias" and _bnb_owner(name, qmods)):
            if owner in qmods and piece == "weight" and tensor.is_floating_point():
                try:
                    qmods[owner].quantize_from(tensor)  # the source tensor is freed below
                except (ValueError, TypeError) as e:  # name the tensor, as the float path does
                    raise type(e)(f"{key}: {e}") from e
                placement.module_done(qmods[owner])
                seen.add(owner)
            elif owner in qmods and piece == "weight" and stored is None:  # a float checkpoint's codes?
                raise TypeError(f"{key}: expected floating-point weights, found {tensor.dtype}")
            else:
                mod_name, rest = _bnb_owner(name, qmods) or (owner, piece)
                pieces.setdefault(mod_name, {})[rest] = tensor if mapped else tensor.clone()
            del tensor
            continue
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
        placement.module_done(model.get_submodule(name.rpartition(".")[0]))
        seen.add(name)
        del tensor
    for mod_name, got in pieces.items():
        rows8 = mod_name in {_model_key(n + ".weight", is_base)[: -len(".weight")] for n in stored_rows8}
        _install_codes(qmods[mod_name], mod_name, got, version, rows8)
        placement.module_done(qmods[mod_name])
        seen.add(mod_name)
    if unexpected:
        raise MissingKeyError(f"unexpected tensors in {folder} (the config does not describe them): "
                       + ", ".join(sorted(unexpected)))
    missing = [n for n in params if n not in seen]
    missing_backbone = [n for n in missing if not n.startswith(HEAD_PREFIXES)]
    missing_backbone += [f"{n}.weight" for n in qmods if n not in seen]
    if missing_backbone:
        raise MissingKeyError(f"tensors missing from {folder}: " + ", ".join(missing_backbone))
    if missing:
        warnings.warn(f"{', '.join(missing)} not in the checkpoint: newly initialised; train the head before use",
                      stacklevel=3)
        _init_missing(model, missing, dev, dtype)
    if unused_heads:
        warnings.warn(f"checkpoint tensors not used by {cls.__name__}: {', '.join(unused_heads)}", stacklevel=3)
    if qmods and dev.type != "cpu":
        model.to(dev)  # codes are made (or read) on the CPU, then moved with the rest
    model.eval()
    model.requires_grad_(False)
    placement.finish(model)  # what no module's step moved (e.g. newly initialised heads)
    _attach_tokenizer(model, folder)
    return model


def _progress(stream, total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with huggingface_hub
        return stream
    return tqdm(stream, total=total, desc=desc, unit="tensor", file=sys.stderr, leave=False,
                disable=not sys.stderr.isatty())


def _stored_quantization(files: list[Path]) -> tuple[str | None, int, dict[str, str], int]:
    """(format of the block Linears, blocksize, {module: format} of every quantized module the file
    names, mpt_lite format version) of a checkpoint saved quantized by mpt_lite or by transformers +
    bitsandbytes; (None, 64, {}, version) for a float one. mpt_lite version 1 files hold every module
    in the one format; bitsandbytes leaves the embedding in float (then it is quantized as for bits=4
    or 8). Files not saved by mpt_lite report FORMAT_VERSION (they hold no int4)."""
    if files[0].suffix != ".safetensors":
        return None, kernels.NF4_BLOCKSIZE, {}, FORMAT_VERSION
    meta = safetensors_metadata(files[0])
    if "mpt_lite_quant" in meta:
        try:
            info = json.loads(meta["mpt_lite_quant"])
            fmt, version, blocksize = info["format"], int(info["version"]), int(info["blocksize"])
            formats = dict(info.get("formats", {}))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise OSError(f"{files[0]}: unreadable mpt_lite_quant metadata ({e})") from e
        if version > FORMAT_VERSION or fmt not in QUANT_TYPES or \
                not set(formats.values()) <= set(QUANT_TYPES) | set(EMBEDDING_ONLY):
            raise OSError(f"{files[0]}: quantized format {fmt!r} version {version} is newer than this mpt_lite")
        if version == 1:
            formats = {name: fmt for name in ("transformer.wte", "wte", "lm_head")}
        return fmt, blocksize, formats, version
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="pt") as sf:
        keys = list(sf.keys())
        states = [k for k in keys if k.endswith(BNB_STATE)]
        if states:
            state = _bnb_state(sf.get_tensor(states[0]), states[0])
            return "nf4", int(state["blocksize"]), {}, FORMAT_VERSION
    if any(k.endswith(".SCB") for k in keys):
        return "int8", kernels.NF4_BLOCKSIZE, {}, FORMAT_VERSION
    return None, kernels.NF4_BLOCKSIZE, {}, FORMAT_VERSION


def _stored_group_size(files: list[Path]) -> int:
    """The int4 group_size an mpt_lite file names for its block Linears (32 before format version 7)."""
    try:
        return int(json.loads(safetensors_metadata(files[0])["mpt_lite_quant"]).get("group_size", kernels.INT4_GROUP))
    except (KeyError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise OSError(f"{files[0]}: unreadable mpt_lite_quant metadata ({e})") from e


def _stored_rows8(files: list[Path]) -> set[str]:
    """Names (as in the file) of the Linears an mpt_lite file of format version 4+ holds in the rows8 layout
    (int4 / nf4; int8 too from version 6); empty for older files."""
    try:
        names = json.loads(safetensors_metadata(files[0])["mpt_lite_quant"]).get("rows8", [])
    except (KeyError, json.JSONDecodeError) as e:
        raise OSError(f"{files[0]}: unreadable mpt_lite_quant metadata ({e})") from e
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise OSError(f"{files[0]}: mpt_lite_quant metadata: 'rows8' must be a list of module names")
    return set(names)


def _rows8_v4_to_saved_layout(mod, got: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Codes that format version 4 stored in its rows8 layout (8-row sets one after another, no 4-set
    interleave: set n8's group g at unit n8 * G + g) -> the saved (row / bitsandbytes) layout."""
    N, K = mod.rows, mod.cols
    if N % 8 or got["weight"].numel() % (N // 8 * 128):
        raise ValueError(f"rows8 codes of {tuple(got['weight'].shape)} do not fit a [{N}, {K}] weight")
    G = got["weight"].numel() // (N // 8 * 128)
    v = got["weight"].reshape(N // 8, G, 4, 8, 4).permute(0, 3, 1, 2, 4)
    out = dict(got)
    if mod.quant_type == "int4":
        out["weight"] = v.reshape(N, G * 16).contiguous()
        out["weight_scales"] = got["weight_scales"].reshape(N // 8, G, 8).permute(0, 2, 1).reshape(N, G).contiguous()
        return out
    codes = torch.cat([v.reshape(N, G, 16) & 15, v.reshape(N, G, 16) >> 4], dim=2).reshape(-1)
    out["weight"] = ((codes[0::2] << 4) | codes[1::2]).contiguous()
    C = got["weight_absmax"].numel() // N
    out["weight_absmax"] = got["weight_absmax"].reshape(N // 8, C, 8).permute(0, 2, 1).reshape(-1).contiguous()
    return out


def _apply_stored_formats(model: nn.Module, formats: dict[str, str], embedding_bits: int | None,
                          folder: Path) -> None:
    """Gives each quantized module the format its saved codes are in (names as in the file)."""
    is_base = not hasattr(model, "transformer")
    qmods = quantized_modules(model)
    for saved_name, fmt in formats.items():
        name = _model_key(saved_name + ".weight", is_base)[: -len(".weight")]
        mod = qmods.get(name)
        if mod is None:
            continue  # a head this class does not have
        if isinstance(mod, QuantEmbedding) and embedding_bits is not None and \
                embedding_bits != {"int8": 8, "int6": 6}.get(fmt, 4):
            raise ValueError(f"{folder} holds the embedding as {fmt}; it cannot be loaded with "
                             f"embedding_bits={embedding_bits} (pass embedding_bits=None to use it as saved)")
        if mod.quant_type != fmt:
            mod.set_format(fmt)


BNB_STATE = ".weight.quant_state.bitsandbytes__nf4"
_BNB_PIECES = ("weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map",
               BNB_STATE[1:], "weight_format", "SCB", "weight_absmax", "weight_scales")


def _bnb_owner(name: str, qmods: dict) -> tuple[str, str] | None:
    """(module, piece) for a bitsandbytes key such as 'blocks.0.attn.Wqkv.weight.absmax'."""
    for piece in _BNB_PIECES:
        if name.endswith("." + piece) and name[: -len(piece) - 1] in qmods:
            return name[: -len(piece) - 1], piece
    return None


def _bnb_state(t: torch.Tensor, key: str) -> dict:
    try:
        return json.loads(bytes(t.to(torch.uint8).reshape(-1).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OSError(f"{key}: unreadable bitsandbytes quant_state ({e})") from e


def _install_codes(mod, name: str, got: dict[str, torch.Tensor], version: int = FORMAT_VERSION,
                   rows8: bool = False) -> None:
    """Quantized pieces of one weight, in mpt_lite's own names or bitsandbytes' -> the module (rows8: codes
    stored in the rows8 layout).

    int4 files of format versions 1-2 hold float32 group scales; they are rounded to half here
    (kernels.int4_half_scales) and the codes kept. That changes each weight by at most 2^-11 of its
    value (half's 11-bit significand; scales below 2^-14, groups whose largest weight is under ~5e-4,
    keep less relative precision), a small fraction of the 4-bit rounding step, with the codes
    unchanged. Requantizing from the dequantized weight was the alternative: it costs a search per
    group at load, and searching again on values already on a 16-level grid gives those same codes
    at best (a different searched scale only adds error), so rounding is both faster and as good."""
    got = dict(got)
    if version < 3 and mod.quant_type == "int4" and got.get("weight_scales") is not None \
            and got["weight_scales"].dtype == torch.float32:
        got["weight_scales"] = kernels.int4_half_scales(got["weight_scales"])
    got.pop("weight_format", None)  # bitsandbytes int8: always "row" in saved checkpoints
    state = got.pop(BNB_STATE[1:], None)
    if state is not None:
        state = _bnb_state(state, f"{name}{BNB_STATE}")
        if state.get("quant_type") != "nf4":
            raise ValueError(f"{name}: bitsandbytes quant_type {state.get('quant_type')!r} is not supported (nf4 only)")
        if list(state.get("shape", [])) != [mod.rows, mod.cols]:
            raise ValueError(f"{name}: bitsandbytes shape {state.get('shape')} != [{mod.rows}, {mod.cols}]")
        mod.blocksize = int(state["blocksize"])
        qmap = got.pop("weight.quant_map", None)
        if qmap is not None and not torch.equal(qmap.float().reshape(-1), kernels.nf4_code()):
            raise ValueError(f"{name}: the quant_map is not the NF4 code table")
        absmax = got.pop("weight.absmax")
        if "weight.nested_absmax" in got:  # bitsandbytes double quantization of absmax
            code = got.pop("weight.nested_quant_map").float().reshape(-1)
            nabs = got.pop("weight.nested_absmax").float().reshape(-1)
            nbs = int(state["nested_blocksize"])
            scale = nabs.repeat_interleave(nbs)[: absmax.numel()]
            absmax = code[absmax.reshape(-1).long()] * scale + float(state["nested_offset"])
        got["weight_absmax"] = absmax.float().reshape(-1)
    if "weight" not in got:
        raise MissingKeyError(f"{name}.weight is missing from the checkpoint (found {sorted(got)})")
    if rows8 and version < 6 and mod.quant_type == "int8":
        raise ValueError(f"{name}: an int8 weight listed as rows8 in a file of format version {version} "
                         "(int8 has a rows8 layout from version 6)")
    if rows8 and version == 4 and "weight" in got:
        got, rows8 = _rows8_v4_to_saved_layout(mod, got), False
    try:
        mod.load_codes(got, rows8=rows8)
    except (KeyError, TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from e


def _model_key(key: str, is_base: bool) -> str:
    if is_base:
        return key[len("transformer."):] if key.startswith("transformer.") else key
    if key.startswith(HEAD_PREFIXES) or key.startswith("transformer."):
        return key
    return "transformer." + key  # a checkpoint of the bare MptModel


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
                   "xavier_normal_", "kaiming_uniform_", "kaiming_normal_")


@contextlib.contextmanager
def _no_init():
    """Skips weight initialisation while a model is built on the meta device for loading: every
    value comes from the checkpoint, and the first random init of a meta tensor costs seconds (it
    imports torch's meta decompositions) in a fresh process."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


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
    from ..text.tokenizer import MptTokenizer

    if (folder / "tokenizer.json").is_file():
        model.tokenizer = MptTokenizer.from_pretrained(folder)
