"""Quantized layers: QuantLinear (the block Linears) and QuantEmbedding (the tied wte/lm_head).

Each holds its weight as the code buffers of one format (formats.py), so state_dict() is the
saved form, plus an optional float ``bias``. Activations stay float (float32, or bfloat16 widened
in the kernel).

In memory a QuantLinear (or an int8 QuantEmbedding: the tied logits' weight, its lookups read rows8 too) on
a CPU whose kernels read it best (kernels.rows8_preferred: AVX-512 without AMX-INT8, or for int4 / nf4 the
AVX2 variant; nf4 where its blocks hold whole groups of 32, nf4_q8_ok; int8 where in_features is a multiple
of 32, and at least Q8_GEMM_MIN_K unless forced) holds its codes in the rows8 layout (8 rows interleaved per
group of 32 k, 4 such sets per group; same buffers, shapes and dtypes): `rows8` says so. state_dict(), codes()
and dequantized() give the row layout (state_dict() and codes() as converted copies), moving the module off
the CPU converts back first, and loading a state dict arranges it again; save_pretrained writes the codes as
held (held_state_dict)."""
from __future__ import annotations

import contextvars
import json

import torch
from torch import nn

from .. import kernels
from ..config import MissingKeyError
from .formats import DEFAULT_4BIT, WeightFormat, weight_format

# 8: the tied embedding (and an untied lm_head) may be int6 (embedding_bits=6; files without int6 are still
# written as version 7 or 6); 7: int4 scales may cover groups of 64, 128 or 256 in_features (the scales' shape says which; "group_size" in
# the metadata is the block Linears'; files with groups of 32 only are still written as version 6); 6: int8
# Linears may be stored in the rows8 layout too (older versions list none); 5: rows8 with its 8-row sets
# interleaved by 4 (csrc/cpu/quant_formats.h); 4: int4 / nf4 Linears may be stored in the rows8 layout
# (the "rows8" list names them; the file maps as it is on a machine whose kernels read rows8, and is converted
# on others; version 4's rows8, without the interleave, is converted at load); 3: int4 group scales in float16
# (4.5 bits per weight); 2: a format per quantized tensor ("formats"); 1: one format for the model. Files of
# versions 1-5 load (hub/loading.py rounds int4 scales of 1-2 to half).
FORMAT_VERSION = 8

# Set while held_state_dict() collects the codes as held: state_dict() then makes no row-layout copies.
_STATE_AS_HELD = contextvars.ContextVar("mpt_lite_state_as_held", default=False)


class QuantWeight(nn.Module):
    """Shared by QuantLinear and QuantEmbedding: a weight [out_rows, in_cols] held quantized."""

    def _init_codes(self, rows: int, cols: int, quant_type: str, blocksize: int, group_size: int) -> None:
        self.format: WeightFormat = weight_format(quant_type)
        self.quant_type = self.format.name
        self.blocksize = kernels.check_blocksize(blocksize)
        self.group_size = kernels.check_int4_group(group_size)  # int4: in_features per scale
        self.rows, self.cols = rows, cols
        # CPU kernel threads for this layer's calls (None: the pool's size); the model sets it for
        # all its layers (MptPreTrainedModel.num_threads).
        self.num_threads: int | None = None
        self.rows8 = False  # codes held in the rows8 layout (see the module's docstring)
        for name, t in self.format.empty_codes(rows, cols, blocksize, **self._group_kw()).items():
            self.register_buffer(name, t)

    def _group_kw(self) -> dict[str, int]:
        """int4's group_size for the format's code shapes and quantizer (the other formats take none)."""
        return {"group": self.group_size} if self.quant_type == "int4" else {}

    def set_format(self, quant_type: str) -> None:
        """Holds this weight in another format (new, uninitialised code buffers)."""
        for name in self.format.code_names:
            del self._buffers[name]
        self._init_codes(self.rows, self.cols, quant_type, self.blocksize, self.group_size)

    def code_names(self) -> tuple[str, ...]:
        return self.format.code_names

    def codes(self) -> dict[str, torch.Tensor]:
        """The code buffers in their saved layout (a converted copy where the module holds rows8)."""
        held = self.kernel_codes()
        return self._convert_rows8(held, False) if self.rows8 else held

    def kernel_codes(self) -> dict[str, torch.Tensor]:
        """The code buffers as held (in the rows8 layout where self.rows8), for the kernels."""
        return {name: self._buffers[name] for name in self.format.code_names}

    # Linears, and an int8 embedding (its row lookups read rows8; int4 / nf4 lookups read only the row layout).
    holds_rows8 = False

    def _convert_rows8(self, codes: dict[str, torch.Tensor], to_rows8: bool) -> dict[str, torch.Tensor]:
        name = self.format.code_names[1]
        if self.quant_type == "int8":  # the row scales are the same in both layouts
            convert = kernels.int8_to_rows8 if to_rows8 else kernels.int8_from_rows8
            return {"weight": convert(codes["weight"], codes[name], num_threads=self.num_threads), name: codes[name]}
        if self.quant_type == "int4":
            convert = kernels.int4_to_rows8 if to_rows8 else kernels.int4_from_rows8
            data, scale = convert(codes["weight"], codes[name], self.cols, num_threads=self.num_threads)
        else:
            convert = kernels.nf4_to_rows8 if to_rows8 else kernels.nf4_from_rows8
            data, scale = convert(codes["weight"], codes[name], (self.rows, self.cols), self.blocksize,
                                  num_threads=self.num_threads)
        return {"weight": data, name: scale}

    def rows8_possible(self) -> bool:
        """Whether these codes have a rows8 layout: a Linear of a multiple of 8 rows in int4, nf4 (nf4_q8_ok) or
        int8 (in_features a multiple of 32)."""
        return self.holds_rows8 and self.rows % 8 == 0 and (
            self.quant_type == "int4" or (self.quant_type == "nf4" and kernels.nf4_q8_ok(self.cols, self.blocksize))
            or (self.quant_type == "int8" and self.cols % 32 == 0))

    def _hold_rows8(self, want: bool) -> None:
        if want != self.rows8:
            for name, t in self._convert_rows8(self.kernel_codes(), want).items():
                self._buffers[name] = t
            self.rows8 = want

    def arrange_codes(self) -> None:
        """Holds the codes in the layout this machine's kernels read best (rows8 or the saved layout). Codes
        the kernels would reject (int4 scales not float16, e.g. after .float()) stay as they are."""
        if not self.rows8_possible():
            return
        if self.quant_type == "int4" and self._buffers["weight_scales"].dtype != kernels.INT4_SCALE_DTYPE:
            return
        self._hold_rows8(self._buffers["weight"].device.type == "cpu"
                         and kernels.rows8_preferred(self.rows, self.quant_type, self.cols, self.group_size))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.rows8 and not _STATE_AS_HELD.get():
            for name, t in self.codes().items():
                destination[prefix + name] = t

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._hold_rows8(False)  # the incoming codes are in the row layout (keys absent keep theirs)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.arrange_codes()

    def _apply(self, fn, *args, **kwargs):
        self._hold_rows8(False)  # e.g. .to("cuda"): the CUDA kernels read the row layout
        super()._apply(fn, *args, **kwargs)
        self.arrange_codes()
        return self

    def load_codes(self, codes: dict[str, torch.Tensor], rows8: bool = False) -> None:
        """Installs already-quantized buffers (checked against this layer's shape); rows8: codes in the rows8
        layout (see rows8_possible). Then holds them as this machine's kernels read best."""
        if rows8 and not self.rows8_possible():
            raise ValueError(f"the rows8 layout is for Linears of a multiple of 8 rows (nf4: blocks of whole groups "
                             f"of 32; int8: in_features a multiple of 32), not a {self.quant_type} "
                             f"{type(self).__name__} of {self.rows} x {self.cols}")
        scales = codes.get("weight_scales")
        if self.quant_type == "int4" and isinstance(scales, torch.Tensor) and self.rows and \
                scales.numel() != self.rows * kernels.int4_groups(self.cols, self.group_size):
            # the scales' count says the group (layouts.int4_group_of): a file saved at group 64 loads as such
            self.group_size = kernels.int4_group_of(self.cols, scales.numel() // self.rows) or self.group_size
        want = self.format.empty_codes_meta(self.rows, self.cols, self.blocksize, **self._group_kw())
        if set(codes) != set(want):
            raise MissingKeyError(f"{self.quant_type} weight needs {sorted(want)}, got {sorted(codes)}")
        for name, t in codes.items():
            if t.dtype != want[name].dtype:
                raise TypeError(f"{name}: expected {want[name].dtype}, got {t.dtype}")
            if t.numel() != want[name].numel():
                raise ValueError(f"{name}: expected shape {tuple(want[name].shape)} for a "
                                 f"[{self.rows}, {self.cols}] weight, got {tuple(t.shape)}")
            self._buffers[name] = t.reshape(want[name].shape).contiguous()
        self.rows8 = rows8
        self.arrange_codes()

    def quantize_from(self, w: torch.Tensor) -> None:
        """Quantizes a float weight [rows, cols] of any float dtype, a slab of rows at a time, so no
        float32 copy of the whole weight is ever made (loading stays within its memory budget)."""
        if tuple(w.shape) != (self.rows, self.cols):
            raise ValueError(f"weight must have shape {(self.rows, self.cols)}, got {tuple(w.shape)}")
        kernels.check_tensor("weight", w, kernels.FLOAT_DTYPES, ndim=2)
        fmt, bs, kw = self.format, self.blocksize, self._group_kw()
        codes = fmt.empty_codes(self.rows, self.cols, bs, **kw)
        unit = fmt.slab_rows(self.cols, bs)
        step = max(unit, (1 << 18) // max(1, self.cols) // unit * unit)
        for r0 in range(0, self.rows, step):
            r1 = min(self.rows, r0 + step)
            fmt.write_slab(codes, fmt.quantize(w[r0:r1], bs, self.num_threads, **kw), r0, r1, self.cols, bs)
        self.load_codes(codes)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight these codes stand for."""
        return self.format.dequantize(self.codes(), self.rows, self.cols, self.blocksize, self.num_threads)

    def _matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        dtype = x.dtype
        if dtype not in (torch.float32, torch.bfloat16):
            x = x.float()
        layout = {"rows8": True} if self.rows8 else {}
        return self.format.matmul(x, self.kernel_codes(), self.rows, self.cols, self.blocksize, bias,
                                  self.num_threads, **layout).to(dtype)

    def extra_repr(self) -> str:
        extra = f", blocksize={self.blocksize}" if self.quant_type == "nf4" else ""
        extra += f", group_size={self.group_size}" if self.quant_type == "int4" and self.group_size != 32 else ""
        extra += ", layout='rows8'" if self.rows8 else ""
        return f"{self.cols}, {self.rows}, quant_type={self.quant_type!r}{extra}"


class QuantLinear(QuantWeight):
    """y = x @ W^T + b with W quantized; a drop-in for nn.Linear(in_features, out_features, bias)."""

    holds_rows8 = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, quant_type: str = DEFAULT_4BIT,
                 blocksize: int = kernels.NF4_BLOCKSIZE, group_size: int = kernels.INT4_GROUP) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_codes(out_features, in_features, quant_type, blocksize, group_size)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, quant_type: str = DEFAULT_4BIT, blocksize: int = kernels.NF4_BLOCKSIZE,
                    group_size: int = kernels.INT4_GROUP):
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, quant_type, blocksize, group_size)
        q.quantize_from(linear.weight.detach())
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul(x, self.bias)


class QuantEmbedding(QuantWeight):
    """The tied wte/lm_head stored once, quantized: forward(ids) dequantizes only the looked-up rows,
    as_linear(x) is the quantized matmul (the logits)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, quant_type: str = DEFAULT_4BIT,
                 blocksize: int = kernels.NF4_BLOCKSIZE, dtype: torch.dtype = torch.float32,
                 group_size: int = kernels.INT4_GROUP) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.out_dtype = num_embeddings, embedding_dim, dtype
        self._init_codes(num_embeddings, embedding_dim, quant_type, blocksize, group_size)

    @property
    def holds_rows8(self) -> bool:
        return self.quant_type == "int8"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        layout = {"rows8": True} if self.rows8 else {}
        rows = self.format.dequantize_rows(self.kernel_codes(), self.rows, self.cols, self.blocksize, ids,
                                           self.num_threads, **layout)
        return rows.to(self.out_dtype)

    def as_linear(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul(x, None)


def quantized_modules(model: nn.Module) -> dict[str, QuantWeight]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantWeight)}


def quant_metadata(model: nn.Module) -> dict[str, str] | None:
    """safetensors metadata describing a quantized model (None for a float one): "format" is the
    block Linears' format, "formats" the format of every quantized module by name."""
    mods = quantized_modules(model)
    if not mods:
        return None
    linears = [m for m in mods.values() if isinstance(m, QuantLinear)]
    main = (linears or list(mods.values()))[0]
    # the lowest version that holds what is written (older mpt_lite reads the files it can)
    version = 8 if any(m.quant_type == "int6" for m in mods.values()) else \
        7 if any(m.quant_type == "int4" and m.group_size != kernels.INT4_GROUP for m in mods.values()) else 6
    return {"mpt_lite_quant": json.dumps({"format": main.quant_type, "version": version,
                                          "blocksize": main.blocksize, "group_size": main.group_size,
                                          "formats": {name: m.quant_type for name, m in mods.items()},
                                          "rows8": sorted(name for name, m in mods.items() if m.rows8)})}


def held_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """model.state_dict() with every quantized weight's codes as held in memory (rows8 where held so):
    what save_pretrained writes, so that the same kind of machine maps the file with no conversion (and
    no row-layout copy of every weight is made, as state_dict() makes)."""
    token = _STATE_AS_HELD.set(True)
    try:
        return model.state_dict()
    finally:
        _STATE_AS_HELD.reset(token)
