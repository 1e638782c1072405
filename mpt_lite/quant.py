"""Quantized layers: QuantLinear (the block Linears) and QuantEmbedding (the tied wte/lm_head).

Each holds its weight in one of the formats of ops.py / csrc/cpu/quant_formats.h as buffers, so
state_dict() is the saved form:

    int8  weight int8 [N, K] (bitsandbytes CB), SCB float32 [N]
    nf4   weight uint8 [ceil(N*K/2)] (bitsandbytes layout), weight_absmax float32 [ceil(N*K/blocksize)]
    int4  weight uint8 [N, ceil(K/32)*16], weight_scales float32 [N, ceil(K/32)]

plus an optional float ``bias``. Activations stay float (float32, or bfloat16 widened in the kernel)."""
from __future__ import annotations

import math

import torch
from torch import nn

from . import ops

QUANT_TYPES = ("int8", "nf4", "int4")
FORMAT_VERSION = 1


def check_quant_type(quant_type: object) -> str:
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {', '.join(QUANT_TYPES)}, got {quant_type!r}")
    return quant_type


def quant_type_for(bits: object, quant_type: object) -> str:
    """bits=8 -> int8; bits=4 -> quant_type "nf4" (default) or "int4"."""
    if bits == 8 and not isinstance(bits, bool):
        if quant_type not in (None, "int8"):
            raise ValueError(f"quant_type={quant_type!r} does not apply to bits=8 (int8 per row)")
        return "int8"
    if bits == 4 and not isinstance(bits, bool):
        if quant_type is None:
            return "nf4"
        if quant_type not in ("nf4", "int4"):
            raise ValueError(f"quant_type for bits=4 must be 'nf4' or 'int4', got {quant_type!r}")
        return quant_type
    raise ValueError(f"bits must be None, 8 or 4, got {bits!r}")


def _empty_codes(quant_type: str, n: int, k: int, blocksize: int) -> dict[str, torch.Tensor]:
    """Uninitialised buffers (on the current default device, e.g. meta while a model is built)."""
    if quant_type == "int8":
        return {"weight": torch.empty(n, k, dtype=torch.int8), "SCB": torch.empty(n, dtype=torch.float32)}
    if quant_type == "nf4":
        return {"weight": torch.empty((n * k + 1) // 2, dtype=torch.uint8),
                "weight_absmax": torch.empty((n * k + blocksize - 1) // blocksize, dtype=torch.float32)}
    g = ops.int4_groups(k)
    return {"weight": torch.empty(n, g * 16, dtype=torch.uint8),
            "weight_scales": torch.empty(n, g, dtype=torch.float32)}


def quantize(quant_type: str, w: torch.Tensor, blocksize: int = ops.NF4_BLOCKSIZE) -> dict[str, torch.Tensor]:
    """The buffers of a float weight [N, K] in quant_type."""
    if quant_type == "int8":
        cb, scb = ops.quantize_int8(w)
        return {"weight": cb, "SCB": scb}
    if quant_type == "nf4":
        packed, absmax = ops.quantize_nf4(w, blocksize)
        return {"weight": packed, "weight_absmax": absmax}
    packed, scales = ops.quantize_int4(w)
    return {"weight": packed, "weight_scales": scales}


class _QuantWeight(nn.Module):
    """Shared by QuantLinear and QuantEmbedding: a weight [out_rows, in_cols] held quantized."""

    def _init_codes(self, rows: int, cols: int, quant_type: str, blocksize: int) -> None:
        self.quant_type = check_quant_type(quant_type)
        self.blocksize = ops._check_blocksize(blocksize)
        self.rows, self.cols = rows, cols
        for name, t in _empty_codes(quant_type, rows, cols, blocksize).items():
            self.register_buffer(name, t)

    def code_names(self) -> tuple[str, ...]:
        return tuple(_empty_codes(self.quant_type, 0, 0, 2))

    def load_codes(self, codes: dict[str, torch.Tensor]) -> None:
        """Installs already-quantized buffers (checked against this layer's shape)."""
        want = _empty_codes(self.quant_type, self.rows, self.cols, self.blocksize)
        if set(codes) != set(want):
            raise KeyError(f"{self.quant_type} weight needs {sorted(want)}, got {sorted(codes)}")
        for name, t in codes.items():
            if t.dtype != want[name].dtype:
                raise TypeError(f"{name}: expected {want[name].dtype}, got {t.dtype}")
            if t.numel() != want[name].numel():
                raise ValueError(f"{name}: expected shape {tuple(want[name].shape)} for a "
                                 f"[{self.rows}, {self.cols}] weight, got {tuple(t.shape)}")
            self._buffers[name] = t.reshape(want[name].shape).contiguous()

    def quantize_from(self, w: torch.Tensor) -> None:
        """Quantizes a float weight [rows, cols] of any float dtype, a slab of rows at a time, so no
        float32 copy of the whole weight is ever made (loading stays within its memory budget)."""
        if tuple(w.shape) != (self.rows, self.cols):
            raise ValueError(f"weight must have shape {(self.rows, self.cols)}, got {tuple(w.shape)}")
        ops.check_tensor("weight", w, ops._FLOATS, ndim=2)
        codes = _empty_codes(self.quant_type, self.rows, self.cols, self.blocksize)
        # A slab's flat size must be a whole number of nf4 blocks: rows in multiples of `unit`.
        unit = self.blocksize // math.gcd(self.cols, self.blocksize) if self.quant_type == "nf4" else 1
        step = max(unit, (1 << 18) // max(1, self.cols) // unit * unit)
        for r0 in range(0, self.rows, step):
            r1 = min(self.rows, r0 + step)
            part = quantize(self.quant_type, w[r0:r1], self.blocksize)
            for name, t in part.items():
                dst = codes[name]
                if self.quant_type == "nf4":
                    off = r0 * self.cols // (2 if name == "weight" else self.blocksize)
                    dst.view(-1)[off: off + t.numel()] = t.view(-1)
                else:
                    dst[r0:r1] = t
        self.load_codes(codes)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight these codes stand for."""
        if self.quant_type == "int8":
            return ops.dequantize_int8(self.weight, self.SCB)
        if self.quant_type == "nf4":
            return ops.dequantize_nf4(self.weight, self.weight_absmax, (self.rows, self.cols), self.blocksize)
        return ops.dequantize_int4(self.weight, self.weight_scales, self.cols)

    def _matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        dtype = x.dtype
        if dtype not in (torch.float32, torch.bfloat16):
            x = x.float()
        if self.quant_type == "int8":
            y = ops.matmul_int8(x, self.weight, self.SCB, bias)
        elif self.quant_type == "nf4":
            y = ops.matmul_nf4(x, self.weight, self.weight_absmax, (self.rows, self.cols), self.blocksize, bias)
        else:
            y = ops.matmul_int4(x, self.weight, self.weight_scales, self.cols, bias)
        return y.to(dtype)

    def extra_repr(self) -> str:
        extra = f", blocksize={self.blocksize}" if self.quant_type == "nf4" else ""
        return f"{self.cols}, {self.rows}, quant_type={self.quant_type!r}{extra}"


class QuantLinear(_QuantWeight):
    """y = x @ W^T + b with W quantized; a drop-in for nn.Linear(in_features, out_features, bias)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, quant_type: str = "nf4",
                 blocksize: int = ops.NF4_BLOCKSIZE) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_codes(out_features, in_features, quant_type, blocksize)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, quant_type: str = "nf4", blocksize: int = ops.NF4_BLOCKSIZE):
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, quant_type, blocksize)
        q.quantize_from(linear.weight.detach())
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul(x, self.bias)


class QuantEmbedding(_QuantWeight):
    """The tied wte/lm_head stored once, quantized: forward(ids) dequantizes only the looked-up rows,
    as_linear(x) is the quantized matmul (the logits)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, quant_type: str = "nf4",
                 blocksize: int = ops.NF4_BLOCKSIZE, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.out_dtype = num_embeddings, embedding_dim, dtype
        self._init_codes(num_embeddings, embedding_dim, quant_type, blocksize)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.quant_type == "int8":
            rows = ops.dequantize_rows_int8(self.weight, self.SCB, ids)
        elif self.quant_type == "nf4":
            rows = ops.dequantize_rows_nf4(self.weight, self.weight_absmax, (self.rows, self.cols), ids,
                                           self.blocksize)
        else:
            rows = ops.dequantize_rows_int4(self.weight, self.weight_scales, self.cols, ids)
        return rows.to(self.out_dtype)

    def as_linear(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul(x, None)


def quantized_modules(model: nn.Module) -> dict[str, _QuantWeight]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _QuantWeight)}


def quant_metadata(model: nn.Module) -> dict[str, str] | None:
    """safetensors metadata describing a quantized model (None for a float one)."""
    import json

    mods = quantized_modules(model)
    if not mods:
        return None
    first = next(iter(mods.values()))
    return {"mpt_lite_quant": json.dumps({"format": first.quant_type, "version": FORMAT_VERSION,
                                          "blocksize": first.blocksize, "group_size": ops.INT4_GROUP})}
