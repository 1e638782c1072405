"""Many-row q8 matmuls (q8=True at M > 16: the integer GEMM tiles on AVX-512 VNNI and AVX2,
csrc/cpu/quant_gemm.h): every ISA variant against the plain-torch reference, and the rows of one
call equal to the same rows computed alone (batch invariance). By default (Q8_MAX_ROWS = 16) more
rows keep float activations: test_quant_kernels.py covers that choice."""
import pytest
import torch

from mpt_lite import ops

ISAS = ops.supported_isas()
FORMATS = ("int8", "int4")
SHAPES = [(5, 33), (77, 1000), (130, 2080), (40, 7000), (257, 97)]  # (N, K): odd, partial blocks and steps


def quantize(fmt, w):
    return ops.quantize_int8(w) if fmt == "int8" else ops.quantize_int4(w)


def matmul(fmt, x, q, K, bias=None, **kw):
    if fmt == "int8":
        return ops.matmul_int8(x, *q, bias=bias, **kw)
    return ops.matmul_int4(x, *q, K, bias=bias, **kw)


def reference(fmt, x, q, K, bias=None):
    if fmt == "int8":
        return ops.ref_matmul_int8(x, *q, bias=bias, q8=True)
    return ops.ref_matmul_int4(x, *q, K, bias=bias, q8=True)


def dequantized(fmt, q, K):
    return ops.ref_dequantize_int8(*q) if fmt == "int8" else ops.ref_dequantize_int4(*q, K)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("M", [17, 33, 100, 513])
def test_many_rows_match_reference(isa, fmt, M):
    gen = torch.Generator().manual_seed(M)
    for i, (N, K) in enumerate(SHAPES):
        if M == 513 and K > 2080:
            continue  # the generic variant is slow; 513 rows are covered by the other shapes
        w = torch.randn(N, K, generator=gen) * 0.05
        x = torch.randn(M, K, generator=gen) * (1 + 10 * torch.rand(M, K, generator=gen) ** 8)
        bias = torch.randn(N, generator=gen) if i % 2 == 0 else None
        q = quantize(fmt, w)
        with ops.use_isa(isa):
            y = matmul(fmt, x, q, K, bias, q8=True)
        want = reference(fmt, x, q, K, bias)
        # float32 rounding of a K-term dot product of the dequantized operands
        bound = (ops.ref_dequantize_q8(x).abs() @ dequantized(fmt, q, K).abs().t()) * (K * 2.0 ** -23) + 1e-6
        err = (y - want).abs()
        assert bool((err <= bound).all()), (N, K, err.max().item())


@pytest.mark.parametrize("isa", ISAS)
def test_many_rows_quantize_activations_exactly(isa):
    # W = I (int8 codes 127, scale 1): the kernel returns x as it quantized it; ties, zeros, a zero
    # block, tiny and huge magnitudes, and a K that ends inside a block and inside a step.
    K, M = 517, 40
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
@pytest.mark.parametrize("fmt", FORMATS)
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


def test_nf4_many_rows_keep_float_activations():
    w = torch.randn(48, 96)
    q = ops.quantize_nf4(w)
    x = torch.randn(40, 96)
    y = ops.matmul_nf4(x, *q, (48, 96))
    torch.testing.assert_close(y, ops.ref_matmul_nf4(x, *q, (48, 96)), rtol=1e-5, atol=1e-5)
