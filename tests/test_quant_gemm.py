"""Many-row q8 matmuls (q8=True at M > 16: the integer GEMM tiles on AVX-512 VNNI, csrc/cpu/quant_gemm.h;
the weight panels on AVX2, csrc/cpu/quant_q8_panels_avx2.cpp) for int8, int4 and nf4: every ISA variant
against the plain-torch reference, and the rows of one call equal to the same rows computed alone (batch
invariance). By default more rows take q8 only from Q8_GEMM_MIN_K in_features on: test_quant_kernels.py
covers that choice."""
import pytest
import torch

from mpt_lite import ops

ISAS = ops.supported_isas()
FORMATS = ("int8", "int4", "nf4")
SHAPES = [(5, 33), (77, 1000), (130, 2080), (40, 7000), (257, 97)]  # (N, K): odd, partial blocks and steps
# nf4 takes q8 where its blocks hold whole q8 blocks of one row (nf4_q8_ok): (N, K, blocksize), with
# partial steps of 512 k, blocks of 32 k to a whole row, and a block over several steps
NF4_SHAPES = [(5, 64, 64), (77, 1024, 64), (130, 2112, 32), (40, 7040, 64), (257, 192, 64), (33, 4096, 1024),
              (9, 1536, 512)]


def shapes(fmt):
    return [(N, K, bs) for N, K, bs in NF4_SHAPES] if fmt == "nf4" else [(N, K, None) for N, K in SHAPES]


def quantize(fmt, w, bs=None):
    if fmt == "nf4":
        return (*ops.quantize_nf4(w, blocksize=bs), tuple(w.shape))  # packed, absmax, shape
    return ops.quantize_int8(w) if fmt == "int8" else ops.quantize_int4(w)


def matmul(fmt, x, q, K, bias=None, bs=None, **kw):
    if fmt == "nf4":
        return ops.matmul_nf4(x, *q, blocksize=bs, bias=bias, **kw)
    if fmt == "int8":
        return ops.matmul_int8(x, *q, bias=bias, **kw)
    return ops.matmul_int4(x, *q, K, bias=bias, **kw)


def reference(fmt, x, q, K, bias=None, bs=None):
    if fmt == "nf4":
        return ops.ref_matmul_nf4(x, *q, blocksize=bs, bias=bias, q8=True)
    if fmt == "int8":
        return ops.ref_matmul_int8(x, *q, bias=bias, q8=True)
    return ops.ref_matmul_int4(x, *q, K, bias=bias, q8=True)


def dequantized(fmt, q, K, bs=None):
    if fmt == "nf4":
        return ops.ref_dequantize_nf4_int8(*q, bs)
    return ops.ref_dequantize_int8(*q) if fmt == "int8" else ops.ref_dequantize_int4(*q, K)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("M", [17, 33, 100, 513])
def test_many_rows_match_reference(isa, fmt, M):
    gen = torch.Generator().manual_seed(M)
    for i, (N, K, bs) in enumerate(shapes(fmt)):
        if M == 513 and K > 2112:
            continue  # the generic variant is slow; 513 rows are covered by the other shapes
        w = torch.randn(N, K, generator=gen) * 0.05
        x = torch.randn(M, K, generator=gen) * (1 + 10 * torch.rand(M, K, generator=gen) ** 8)
        bias = torch.randn(N, generator=gen) if i % 2 == 0 else None
        q = quantize(fmt, w, bs)
        with ops.use_isa(isa):
            y = matmul(fmt, x, q, K, bias, bs, q8=True)
        want = reference(fmt, x, q, K, bias, bs)
        # float32 rounding of a K-term dot product of the dequantized operands
        bound = (ops.ref_dequantize_q8(x).abs() @ dequantized(fmt, q, K, bs).abs().t()) * (K * 2.0 ** -23) + 1e-6
        err = (y - want).abs()
        assert bool((err <= bound).all()), (N, K, err.max().item())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("K, M", [(517, 40), (512, 40), (512, 5)])
def test_many_rows_quantize_activations_exactly(isa, K, M):
    # W = I (int8 codes 127, scale 1): the kernel returns x as it quantized it; ties, zeros, a zero
    # block, tiny and huge magnitudes, and a K that ends inside a block and inside
    # a step (517; 512: whole blocks, which AVX2 quantizes 8 lanes at a time; 5 rows: the decode kernels).
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(M, K, generator=gen) * torch.logspace(-30, 30, K)
    x[0, :32] = torch.arange(32) - 15.5
    x[1, 32:64] = 0.0
    x[2, 64:96] = torch.tensor([127.0] + [2.5, -3.5, 0.5, -0.5] * 7 + [1.5, 4.5, 6.5])
    x[3] = 1e-44  # amax / 127 underflows to 0: every code 0
    cb, scb = ops.quantize_int8(torch.eye(K))
    with ops.use_isa(isa):
        y = ops.matmul_int8(x, cb, scb, q8=True)
    assert torch.allclose(y, ops.ref_dequantize_q8(x), rtol=2 ** -20, atol=0)
    assert bool((y[3] == 0).all())


@pytest.mark.skipif("avx512" not in ISAS, reason="the GEMM tiles are AVX-512 VNNI kernels")
@pytest.mark.parametrize("fmt", ("int8", "int4"))
@ops.use_amx(False)  # with AMX-INT8, 4-32 rows take its tiles instead (test_q8_amx.py)
def test_rows_do_not_depend_on_row_count_avx512(fmt):
    # 4-16 rows (q8_wide) and > 16 rows (GEMM tiles) sum every row in the same order: bit-identical.
    gen = torch.Generator().manual_seed(11)
    for N, K in SHAPES:
        w = torch.randn(N, K, generator=gen) * 0.05
        x = torch.randn(200, K, generator=gen)
        bias = torch.randn(N, generator=gen)
        q = quantize(fmt, w)
        with ops.use_isa("avx512"):
            full = matmul(fmt, x, q, K, bias, q8=True)
            for m0, m1 in [(0, 4), (0, 16), (5, 21), (7, 40), (100, 200)]:
                assert torch.equal(matmul(fmt, x[m0:m1], q, K, bias, q8=True), full[m0:m1]), (N, K, m0, m1)
            for threads in (1, 2):
                assert torch.equal(matmul(fmt, x, q, K, bias, q8=True, num_threads=threads), full)


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "generic"])
@pytest.mark.parametrize("fmt", FORMATS)
@ops.use_amx(False)  # with AMX-INT8, up to 32 rows take its tiles instead (test_q8_amx.py)
def test_tile_rows_do_not_depend_on_row_count(isa, fmt):
    # Above 16 rows every row is summed whole by one thread in a fixed order (nf4 too, whose 4-16 row
    # kernels sum in another order): any slice of > 16 rows and any thread count give the same bits.
    gen = torch.Generator().manual_seed(12)
    for N, K, bs in shapes(fmt)[:4]:
        w = torch.randn(N, K, generator=gen) * 0.05
        x = torch.randn(120, K, generator=gen)
        bias = torch.randn(N, generator=gen)
        q = quantize(fmt, w, bs)
        with ops.use_isa(isa):
            full = matmul(fmt, x, q, K, bias, bs, q8=True)
            for m0, m1 in [(0, 17), (5, 40), (3, 120)]:
                assert torch.equal(matmul(fmt, x[m0:m1], q, K, bias, bs, q8=True), full[m0:m1]), (N, K, m0, m1)
            for threads in (1, 2):
                assert torch.equal(matmul(fmt, x, q, K, bias, bs, q8=True, num_threads=threads), full)


@ops.use_amx(False)
def test_nf4_many_rows_keep_float_activations_below_min_k_or_without_whole_blocks():
    for shape, bs in (((48, 96), 64), ((48, 1056), 64), ((48, 1024), 16)):
        q = ops.quantize_nf4(torch.randn(*shape), blocksize=bs)
        x = torch.randn(40, shape[1])
        y = ops.matmul_nf4(x, *q, shape, blocksize=bs)
        assert torch.equal(y, ops.matmul_nf4(x, *q, shape, blocksize=bs, q8=False))
        torch.testing.assert_close(y, ops.ref_matmul_nf4(x, *q, shape, blocksize=bs), rtol=1e-4, atol=1e-4)
