"""What `mpt-lite info` reports about a checkpoint without loading its weights: parameter counts
and the size of the weights in each format, computed from the shapes the config implies."""
from __future__ import annotations

import math
from typing import Any

import torch

from ..config import MptConfig
from ..quant import DEFAULT_4BIT, FORMATS, FOUR_BIT, embedding_quant_type

NF4_BLOCK = 64  # the default nf4 blocksize, as load() quantizes

QUANTIZED_SUFFIXES = ("Wqkv.weight", "out_proj.weight", "up_proj.weight", "down_proj.weight")


def parameter_shapes(config: MptConfig, task: str = "causal-lm") -> dict[str, tuple[int, ...]]:
    """name -> shape of every parameter of the model, built on the meta device (no memory)."""
    from .heads import TASKS

    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    with torch.device("meta"):
        model = TASKS[task](config)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def is_quantized(name: str, shape: tuple[int, ...]) -> bool:
    """Every Linear of the blocks and the (tied) wte / an untied lm_head are quantized; norms,
    biases and the small classification/QA layers stay in float."""
    if len(shape) != 2:
        return False
    return name.endswith(QUANTIZED_SUFFIXES) or name.endswith(("wte.weight", "lm_head.weight"))


def is_embedding(name: str) -> bool:
    return name.endswith(("wte.weight", "lm_head.weight"))


def format_sizes(shapes: dict[str, tuple[int, ...]], embedding_bits: int | None = None,
                 group_size: int = 32) -> dict[str, int]:
    """Bytes of the weights in fp32, bf16 (= fp16), int8, nf4 and int4 (at group_size), as load() holds them: the
    4-bit formats keep the tied embedding (and an untied lm_head) at int8 unless embedding_bits=4 or 6; parts
    that stay in float are counted as fp32 (the default dtype they load in)."""
    sizes = {"fp32": 0, "bf16": 0, "int8": 0, "nf4": 0, "int4": 0}
    for name, shape in shapes.items():
        n = math.prod(shape)
        sizes["fp32"] += 4 * n
        sizes["bf16"] += 2 * n
        if not is_quantized(name, shape):
            for k in ("int8", "nf4", "int4"):
                sizes[k] += 4 * n
            continue
        out_f, in_f = shape
        for k in ("int8", "nf4", "int4"):
            fmt = embedding_quant_type(k, embedding_bits if k in FOUR_BIT else None) if is_embedding(name) else k
            group = {"group": group_size} if fmt == "int4" else {}
            sizes[k] += FORMATS[fmt].nbytes(out_f, in_f, NF4_BLOCK, **group)
    return sizes


def block_bits_per_weight(shapes: dict[str, tuple[int, ...]]) -> dict[str, float]:
    """Bits per weight (codes + scales) of the block Linears in each quantized format: int4 4.5
    (fp16 scale per 32), nf4 4.5 (fp32 absmax per 64), int8 8 + 32 / in_features (fp32 per row)."""
    mats = [s for name, s in shapes.items() if is_quantized(name, s) and not is_embedding(name)]
    n = sum(math.prod(s) for s in mats)
    return {k: 8.0 * sum(FORMATS[k].nbytes(o, i, NF4_BLOCK) for o, i in mats) / n if n else 0.0
            for k in ("int8", "nf4", "int4")}


def model_info(config: MptConfig, task: str = "causal-lm") -> dict[str, Any]:
    shapes = parameter_shapes(config, task)
    n_params = sum(math.prod(s) for s in shapes.values())
    n_quant = sum(math.prod(s) for name, s in shapes.items() if is_quantized(name, s))
    emb = math.prod(shapes.get("transformer.wte.weight", shapes.get("wte.weight", (0,))))
    sizes = format_sizes(shapes)
    return {
        "parameters": n_params,
        "parameters_without_embedding": n_params - emb,
        "quantized_parameters": n_quant,
        "bytes": sizes,
        "block_bits_per_weight": block_bits_per_weight(shapes),
        "default_4bit": DEFAULT_4BIT,
        # what the int8 embedding of the 4-bit formats costs over embedding_bits=4
        "embedding_int8_extra_bytes": {k: sizes[k] - format_sizes(shapes, embedding_bits=4)[k] for k in FOUR_BIT},
        # what embedding_bits=6 (int6, 6.5 bits) saves against the int8 embedding
        "embedding_int6_saved_bytes": {k: sizes[k] - format_sizes(shapes, embedding_bits=6)[k] for k in FOUR_BIT},
        # int4 as load(bits=4, group_size=G) holds it (the embedding int8)
        "int4_bytes_by_group_size": {g: format_sizes(shapes, group_size=g)["int4"] for g in (32, 64, 128)},
    }


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover
