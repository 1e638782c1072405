"""The weight formats, one object each: how a float weight [N, K] becomes codes, what the codes
cost in bytes, and how the kernels dequantize them and multiply by them.

    int8  weight int8 [N, K] (bitsandbytes CB), SCB float32 [N]
    nf4   weight uint8 [ceil(N*K/2)] (bitsandbytes layout), weight_absmax float32 [ceil(N*K/blocksize)]
    int4  weight uint8 [N, ceil(K/32)*16], weight_scales float16 [N, ceil(K/group)]  (group 32: 4.5 bits
          per weight, the default; 64: 4.25; 128: 4.125; float32 scales before format version 3, converted at load)
    int6  weight uint8 [N, ceil(K/32)*24], weight_scales float16 [N, ceil(K/32)]  (6.5 bits per weight; the
          tied embedding's format at embedding_bits=6, CPU only; csrc/cpu/quant_int6.h)

Byte layouts: csrc/cpu/quant_formats.h. int4 and nf4 quantize with searched block scales (least
squared error, kernels.search_quantize_*), stored in the same layouts as the absmax quantizers'. Code tensors are held in a dict keyed by the names above
(the names they have in a module's state_dict and in saved files)."""
from __future__ import annotations

import math

import torch

from .. import kernels

QUANT_TYPES = ("int8", "nf4", "int4")


class WeightFormat:
    """One quantized weight format. `codes` is the dict of code tensors of one weight."""

    name: str = ""
    code_names: tuple[str, ...] = ()

    def empty_codes(self, n: int, k: int, blocksize: int) -> dict[str, torch.Tensor]:
        """Uninitialised code tensors for a weight [n, k] (on the current default device)."""
        raise NotImplementedError

    def quantize(self, w: torch.Tensor, blocksize: int, num_threads: int | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def dequantize(self, codes: dict, n: int, k: int, blocksize: int, num_threads: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def dequantize_rows(self, codes: dict, n: int, k: int, blocksize: int, ids: torch.Tensor,
                        num_threads: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def matmul(self, x: torch.Tensor, codes: dict, n: int, k: int, blocksize: int,
               bias: torch.Tensor | None, num_threads: int | None = None) -> torch.Tensor:
        """num_threads (every op): at most that many kernel threads for the call (None: the pool's size)."""
        raise NotImplementedError

    def nbytes(self, n: int, k: int, blocksize: int, **kw: int) -> int:
        """Bytes of the codes of a weight [n, k]; kw: the format's own shape keywords (int4's group)."""
        return sum(t.numel() * t.element_size() for t in self.empty_codes_meta(n, k, blocksize, **kw).values())

    def empty_codes_meta(self, n: int, k: int, blocksize: int, **kw: int) -> dict[str, torch.Tensor]:
        with torch.device("meta"):
            return self.empty_codes(n, k, blocksize, **kw)

    def slab_rows(self, k: int, blocksize: int) -> int:
        """Rows of a weight that quantize independently of the others (its slabs are multiples)."""
        return 1

    def write_slab(self, codes: dict, part: dict, r0: int, r1: int, k: int, blocksize: int) -> None:
        """Copies the codes of rows r0:r1 (quantized alone) into the codes of the whole weight."""
        for name, t in part.items():
            codes[name][r0:r1] = t


class Int8Format(WeightFormat):
    name, code_names = "int8", ("weight", "SCB")

    def empty_codes(self, n, k, blocksize):
        return {"weight": torch.empty(n, k, dtype=torch.int8), "SCB": torch.empty(n, dtype=torch.float32)}

    def quantize(self, w, blocksize, num_threads=None):
        cb, scb = kernels.quantize_int8(w, num_threads=num_threads)
        return {"weight": cb, "SCB": scb}

    def dequantize(self, codes, n, k, blocksize, num_threads=None):
        return kernels.dequantize_int8(codes["weight"], codes["SCB"], num_threads=num_threads)

    def dequantize_rows(self, codes, n, k, blocksize, ids, num_threads=None, rows8=False):
        return kernels.dequantize_rows_int8(codes["weight"], codes["SCB"], ids, num_threads=num_threads, rows8=rows8)

    def matmul(self, x, codes, n, k, blocksize, bias, num_threads=None, rows8=False):
        return kernels.matmul_int8(x, codes["weight"], codes["SCB"], bias, num_threads=num_threads, rows8=rows8)


class Nf4Format(WeightFormat):
    name, code_names = "nf4", ("weight", "weight_absmax")

    def empty_codes(self, n, k, blocksize):
        return {"weight": torch.empty((n * k + 1) // 2, dtype=torch.uint8),
                "weight_absmax": torch.empty((n * k + blocksize - 1) // blocksize, dtype=torch.float32)}

    def quantize(self, w, blocksize, num_threads=None):
        packed, absmax = kernels.search_quantize_nf4(w, blocksize, num_threads=num_threads)
        return {"weight": packed, "weight_absmax": absmax}

    def dequantize(self, codes, n, k, blocksize, num_threads=None):
        return kernels.dequantize_nf4(codes["weight"], codes["weight_absmax"], (n, k), blocksize,
                                      num_threads=num_threads)

    def dequantize_rows(self, codes, n, k, blocksize, ids, num_threads=None):
        return kernels.dequantize_rows_nf4(codes["weight"], codes["weight_absmax"], (n, k), ids, blocksize,
                                           num_threads=num_threads)

    def matmul(self, x, codes, n, k, blocksize, bias, num_threads=None, rows8=False):
        return kernels.matmul_nf4(x, codes["weight"], codes["weight_absmax"], (n, k), blocksize, bias,
                                  num_threads=num_threads, rows8=rows8)

    def slab_rows(self, k, blocksize):
        # blocks run over the flattened weight: a slab must hold a whole number of them
        return blocksize // math.gcd(k, blocksize)

    def write_slab(self, codes, part, r0, r1, k, blocksize):
        for name, t in part.items():
            off = r0 * k // (2 if name == "weight" else blocksize)
            codes[name].view(-1)[off: off + t.numel()] = t.view(-1)


class Int4Format(WeightFormat):
    """`blocksize` (nf4's) does not apply; `group` is in_features per scale (32, 64, 128; kernels.INT4_GROUPS).
    The kernels read the group from the scales' shape."""
    name, code_names = "int4", ("weight", "weight_scales")

    def empty_codes(self, n, k, blocksize, group=kernels.INT4_GROUP):
        return {"weight": torch.empty(n, kernels.int4_groups(k) * 16, dtype=torch.uint8),
                "weight_scales": torch.empty(n, kernels.int4_groups(k, group), dtype=kernels.INT4_SCALE_DTYPE)}

    def quantize(self, w, blocksize, num_threads=None, group=kernels.INT4_GROUP):
        packed, scales = kernels.search_quantize_int4(w, num_threads=num_threads, group=group)
        return {"weight": packed, "weight_scales": scales}

    def dequantize(self, codes, n, k, blocksize, num_threads=None):
        return kernels.dequantize_int4(codes["weight"], codes["weight_scales"], k, num_threads=num_threads)

    def dequantize_rows(self, codes, n, k, blocksize, ids, num_threads=None):
        return kernels.dequantize_rows_int4(codes["weight"], codes["weight_scales"], k, ids, num_threads=num_threads)

    def matmul(self, x, codes, n, k, blocksize, bias, num_threads=None, rows8=False):
        return kernels.matmul_int4(x, codes["weight"], codes["weight_scales"], k, bias, num_threads=num_threads,
                                   rows8=rows8)


class Int6Format(WeightFormat):
    """The tied embedding's 6-bit format (embedding_bits=6): an fp16 scale per 32 in_features from the group's
    signed absmax. Not a block Linears' format (quant_type); CPU kernels only."""
    name, code_names = "int6", ("weight", "weight_scales")

    def empty_codes(self, n, k, blocksize):
        return {"weight": torch.empty(n, kernels.int6_row_bytes(k), dtype=torch.uint8),
                "weight_scales": torch.empty(n, kernels.int4_groups(k), dtype=kernels.INT4_SCALE_DTYPE)}

    def quantize(self, w, blocksize, num_threads=None):
        codes, scales = kernels.quantize_int6(w, num_threads=num_threads)
        return {"weight": codes, "weight_scales": scales}

    def dequantize(self, codes, n, k, blocksize, num_threads=None):
        return kernels.dequantize_int6(codes["weight"], codes["weight_scales"], k, num_threads=num_threads)

    def dequantize_rows(self, codes, n, k, blocksize, ids, num_threads=None):
        return kernels.dequantize_rows_int6(codes["weight"], codes["weight_scales"], k, ids, num_threads=num_threads)

    def matmul(self, x, codes, n, k, blocksize, bias, num_threads=None):
        return kernels.matmul_int6(x, codes["weight"], codes["weight_scales"], k, bias, num_threads=num_threads)


FORMATS: dict[str, WeightFormat] = {f.name: f for f in (Int8Format(), Nf4Format(), Int4Format(), Int6Format())}
EMBEDDING_ONLY = ("int6",)  # formats of the tied embedding / lm_head only (embedding_bits), not quant_type's


def weight_format(quant_type: object) -> WeightFormat:
    """The format object of "int8", "nf4", "int4" or "int6" (the embedding's); ValueError for anything else."""
    if quant_type not in FORMATS:
        raise ValueError(f"quant_type must be one of {', '.join(QUANT_TYPES)}, got {quant_type!r}")
    return FORMATS[quant_type]


def check_quant_type(quant_type: object) -> str:
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {', '.join(QUANT_TYPES)}, got {quant_type!r}")
    return weight_format(quant_type).name


FOUR_BIT = ("int4", "nf4")
DEFAULT_4BIT = "int4"  # lower held-out perplexity and faster decoding than nf4 (docs/default_model.md)


def quant_type_for(bits: object, quant_type: object) -> str:
    """bits=8 -> int8; bits=4 -> quant_type "int4" (default) or "nf4"."""
    if bits == 8 and not isinstance(bits, bool):
        if quant_type not in (None, "int8"):
            raise ValueError(f"quant_type={quant_type!r} does not apply to bits=8 (int8 per row)")
        return "int8"
    if bits == 4 and not isinstance(bits, bool):
        if quant_type is None:
            return DEFAULT_4BIT
        if quant_type not in FOUR_BIT:
            raise ValueError(f"quant_type for bits=4 must be 'int4' or 'nf4', got {quant_type!r}")
        return quant_type
    raise ValueError(f"bits must be None, 8 or 4, got {bits!r}")


def check_embedding_bits(embedding_bits: object, quant_type: str | None) -> None:
    """embedding_bits is None, 4, 6 or 8, and only given when the block weights are 4-bit."""
    if embedding_bits is None:
        return
    if isinstance(embedding_bits, bool) or embedding_bits not in (4, 6, 8):
        raise ValueError(f"embedding_bits must be 4, 6 or 8, got {embedding_bits!r}")
    if quant_type not in FOUR_BIT:
        held = "unquantized" if quant_type is None else quant_type
        raise ValueError(f"embedding_bits is only meaningful with bits=4 (the block weights are {held})")


def embedding_quant_type(quant_type: str | None, embedding_bits: object = None) -> str | None:
    """The format of the tied wte/lm_head when the block Linears are in quant_type: int8 under 4-bit
    blocks (llama.cpp keeps it at 6 bits, bitsandbytes in float: it is the costliest matrix to
    round, read by every token twice), int6 with embedding_bits=6 (CPU only: 0.81 of int8's bytes, under
    llama.cpp Q4_0's perplexity cost with int4 blocks), the blocks' own 4-bit format with embedding_bits=4."""
    check_embedding_bits(embedding_bits, quant_type)
    if quant_type in FOUR_BIT and embedding_bits == 6:
        return "int6"
    if quant_type in FOUR_BIT and embedding_bits != 4:
        return "int8"
    return quant_type
