"""q8 matmuls of 4-32 rows on AMX-INT8 tiles (csrc/cpu/quant_q8_amx.cpp) for int8, int4 and nf4: against
the plain-torch q8 reference, with partial tiles of weight rows, partial blocks, slabs and chunks of K;
and every row computed in one fixed order, whatever the row count and the thread count."""
import pytest
import torch

from mpt_lite import kernels, ops

from test_quant_gemm import NF4_SHAPES, dequantized, matmul, quantize, reference

pytestmark = pytest.mark.skipif(not kernels.amx_int8_enabled(),
                                reason="needs a CPU (and OS) with AMX-INT8 tiles, and the avx512 kernels")

FORMATS = ("int8", "int4", "nf4")
# (N, K): N not a multiple of 16 rows, K ending inside a block, a chunk of 4 blocks and a slab of 16
SHAPES = [(5, 33), (77, 1000), (130, 2080), (40, 7000), (16, 512), (257, 97)]
ROWS = {"int8": [4, 7, 8, 9, 16, 17, 32], "int4": [8, 12, 16, 17, 25, 32], "nf4": [8, 12, 16, 20, 32]}
PAIR_ROWS = 8  # up to this many rows one product covers two blocks: its own (fixed) summation order


def shapes(fmt):
    return [(N, K, bs) for N, K, bs in NF4_SHAPES] if fmt == "nf4" else [(N, K, None) for N, K in SHAPES]


@pytest.mark.parametrize("fmt", FORMATS)
def test_amx_rows_match_reference(fmt):
    gen = torch.Generator().manual_seed(21)
    for M in ROWS[fmt]:
        for i, (N, K, bs) in enumerate(shapes(fmt)):
            w = torch.randn(N, K, generator=gen) * 0.05
            x = torch.randn(M, K, generator=gen) * (1 + 10 * torch.rand(M, K, generator=gen) ** 8)
            bias = torch.randn(N, generator=gen) if i % 2 == 0 else None
            q = quantize(fmt, w, bs)
            y = matmul(fmt, x, q, K, bias, bs, q8=True)
            want = reference(fmt, x, q, K, bias, bs)
            # float32 rounding of a K-term dot product of the dequantized operands
            bound = (ops.ref_dequantize_q8(x).abs() @ dequantized(fmt, q, K, bs).abs().t()) * (K * 2.0 ** -23) + 1e-6
            err = (y - want).abs()
            assert bool((err <= bound).all()), (M, N, K, err.max().item())


@pytest.mark.parametrize("fmt", FORMATS)
def test_amx_rows_do_not_depend_on_row_count_or_threads(fmt):
    # each layout sums every row in one order: any slice within its row range, any thread count
    gen = torch.Generator().manual_seed(22)
    lo = min(ROWS[fmt])
    layouts = [(PAIR_ROWS, [(0, lo), (PAIR_ROWS - lo, PAIR_ROWS), (1, PAIR_ROWS)])] if lo <= PAIR_ROWS else []
    layouts.append((32, [(0, PAIR_ROWS + 1), (3, 20), (0, 16), (5, 22), (10, 32)]))
    for N, K, bs in shapes(fmt)[:4]:
        w = torch.randn(N, K, generator=gen) * 0.05
        bias = torch.randn(N, generator=gen)
        q = quantize(fmt, w, bs)
        for rows, slices in layouts:
            x = torch.randn(rows, K, generator=gen)
            full = matmul(fmt, x, q, K, bias, bs, q8=True)
            for m0, m1 in slices:
                if m1 - m0 >= lo:
                    assert torch.equal(matmul(fmt, x[m0:m1], q, K, bias, bs, q8=True), full[m0:m1]), (N, K, m0, m1)
            for threads in (1, 2):
                assert torch.equal(matmul(fmt, x, q, K, bias, bs, q8=True, num_threads=threads), full)


def test_amx_switch_turns_the_int8_tiles_off():
    with kernels.use_amx(False):
        assert not kernels.amx_int8_enabled()
    assert kernels.amx_int8_enabled()
