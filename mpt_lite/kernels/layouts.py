"""Constants of the weight and activation layouts (csrc/cpu/quant_formats.h), shared by the
kernel ops and their plain-torch references."""
from __future__ import annotations

import torch

NF4_CODE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
            -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
            0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
            0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
NF4_BLOCKSIZE = 64
INT4_GROUP = 32


def nf4_code() -> torch.Tensor:
    return torch.tensor(NF4_CODE, dtype=torch.float32)


# int4's codes come in units of INT4_GROUP k; its scales may cover a larger group (k per scale): 64 is 4.25 bits
# per weight, 128 4.125 (csrc/cpu/quant_formats.h; docs/benchmarks.md, "int4 groups of 64 and 128").
INT4_GROUPS = (32, 64, 128, 256)


def int4_groups(in_features: int, group: int = INT4_GROUP) -> int:
    """Groups of `group` k in a row of in_features (scales a row; with the default, also the 32-k code units)."""
    return (in_features + group - 1) // group


def int4_group_of(in_features: int, scale_columns: int) -> int | None:
    """The group (k per scale) of int4 scales with scale_columns columns for in_features, the smallest that fits
    (where several fit, all scales cover the whole row: the same weight); None when none does."""
    for g in INT4_GROUPS:
        if int4_groups(in_features, g) == scale_columns:
            return g
    return None


def check_int4_group(group: object) -> int:
    if isinstance(group, bool) or not isinstance(group, int) or group not in INT4_GROUPS:
        raise ValueError(f"int4 group_size must be one of {', '.join(map(str, INT4_GROUPS))} (in_features per scale), "
                         f"got {group!r}")
    return group


INT4_SCALE_DTYPE = torch.float16  # int4 group scales: IEEE half (format version 3; fp32 before)
HALF_MAX = 65504.0


def int4_half_scales(d: torch.Tensor) -> torch.Tensor:
    """int4 group scales as stored: clamped to the largest finite half, rounded to nearest even
    (csrc/cpu/quant_formats.h half_bits does the same)."""
    return d.float().clamp(-HALF_MAX, HALF_MAX).to(INT4_SCALE_DTYPE)


# Which matmuls quantize their activations to q8 blocks by default: at most Q8_MAX_ROWS rows (decode)
# for every format, and any number of rows once in_features >= Q8_GEMM_MIN_K (int8, int4, and nf4 where
# nf4_q8_ok), where the integer GEMM tiles (csrc/cpu/quant_gemm.h) beat the float GEMM (1.3-1.7x at
# K >= 2048 on a 1.3B layer; nf4 1.2-1.3x over its float path) while at K = 256-768 they lose (0.6-0.9x: a partly empty 512-k step); docs/benchmarks.md,
# "Prefill GEMM". Other matmuls keep float activations unless q8=True.
Q8_MAX_ROWS = 16
Q8_GEMM_MIN_K = 1024
Q8_BLOCK = 32

# Where the CPU has AMX tiles (kernels.amx_enabled()), the many-row matmuls that would round their
# activations to q8 for the integer GEMM tiles (from AMX_MIN_ROWS rows and Q8_GEMM_MIN_K in_features on,
# q8 not forced) take bf16 operands on the AMX tiles instead (csrc/cpu/quant_gemm_amx.cpp: x and the
# decoded weight rounded to bfloat16, float32 sums; ref_matmul_*(bf16=True) = ref_matmul_bf16_operands),
# any format. 2.3-2.5x the q8 GEMM tiles at 512 rows on the 1.3B shapes; up to 32 rows, where the decoding
# of the weight to bf16 is shared by too few rows, q8 activations on AMX-INT8 tiles are faster
# (csrc/cpu/quant_q8_amx.cpp: 1.5x at 32 rows for int4; docs/benchmarks.md, "AMX-INT8"). Shorter rows
# keep float activations (exact), as they did.
AMX_MIN_ROWS = 33


def use_bf16(q8: object, rows: int, gemm_k: int, amx: bool) -> bool:
    """Whether a matmul of `rows` activation rows and `gemm_k` in_features takes bf16 operands on AMX
    tiles; amx: whether the tiles are enabled (kernels.amx_enabled()). A forced q8 (True or False) keeps
    its path."""
    return q8 is None and amx and rows >= AMX_MIN_ROWS and gemm_k >= Q8_GEMM_MIN_K


def use_q8(q8: object, rows: int, gemm_k: int | None = None) -> bool:
    """The q8 choice of a matmul of `rows` activation rows; gemm_k: its in_features (None: only the
    row count decides)."""
    if q8 is None:
        return rows <= Q8_MAX_ROWS or (gemm_k is not None and gemm_k >= Q8_GEMM_MIN_K)
    if not isinstance(q8, bool):
        raise TypeError(f"q8 must be None, True or False, got {q8!r}")
    return q8


# nf4 on the integer path (csrc/cpu/quant_formats.h): its codes as 7-bit integers, round(63 * NF4_CODE)
# (so that AVX2's pmaddubsw takes them + 64 unsigned without saturating), a block's scale absmax / 63, and
# the shapes that take it (no block straddles two rows, each block holds whole q8 blocks).
NF4_INT_MAX = 63
NF4_INT8 = tuple(int(v) for v in torch.round(torch.tensor(NF4_CODE, dtype=torch.float32) * NF4_INT_MAX).tolist())


def nf4_q8_ok(in_features: int, blocksize: int) -> bool:
    return blocksize >= Q8_BLOCK and blocksize & (blocksize - 1) == 0 and in_features % blocksize == 0
