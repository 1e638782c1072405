"""The bf16 AMX tiles (csrc/cpu/quant_gemm_amx.cpp) for many-row matmuls: int8, int4 and nf4 against
ops.ref_matmul_bf16_operands (x and the decoded weight rounded to bfloat16, float32 sums), odd shapes
and every nf4 block layout; results independent of the thread count and of the other rows in the
call; the rule that picks them (ops.AMX_MIN_ROWS and Q8_GEMM_MIN_K, ops.use_amx, a forced q8) and its
errors. The kernel tests take the tiles at any in_features (the `tiles` fixture), so that short odd
shapes exercise every tail."""
import pytest
import torch

from mpt_lite import ops
from mpt_lite.kernels import quant_ops

needs_amx = pytest.mark.skipif(not ops.amx_supported(),
                               reason="this CPU (or its OS, or this build) has no AMX tiles: "
                                      "the bf16 tile path is not taken here")
# (N, K, nf4 blocksize): partial tiles of 16/32 weight rows, K tails (K % 32 != 0), nf4 blocks that
# straddle rows (K % blocksize != 0), blocks under 32 and over a row, odd bytes (N * K odd)
SHAPES = [(1, 1, 64), (5, 33, 64), (33, 100, 64), (77, 1000, 64), (130, 2080, 32), (40, 96, 16), (17, 64, 1024),
          (31, 129, 64), (64, 2048, 128)]


@pytest.fixture
def tiles(monkeypatch):
    """Every unforced matmul on the AMX tiles, whatever its in_features or rows."""
    monkeypatch.setattr(quant_ops, "bf16_operands", lambda q8, rows, in_features: q8 is None)
    with ops.use_isa("avx512"), ops.use_amx(True):
        yield


def quantize(fmt, w, bs):
    if fmt == "nf4":
        return ops.quantize_nf4(w, blocksize=bs)
    return ops.quantize_int8(w) if fmt == "int8" else ops.quantize_int4(w)


def matmul(fmt, x, q, shape, bs, bias=None, **kw):
    if fmt == "nf4":
        return ops.matmul_nf4(x, *q, shape, blocksize=bs, bias=bias, **kw)
    if fmt == "int8":
        return ops.matmul_int8(x, *q, bias=bias, **kw)
    return ops.matmul_int4(x, *q, shape[1], bias=bias, **kw)


def oracle(fmt, x, q, shape, bs, bias=None):
    """Independent of mpt_lite's matmul code: the weight decoded by the plain-torch reference, then
    bf16 operands (int8: its codes, times scb / 127), float32 sums."""
    if fmt == "int8":
        return ops.ref_matmul_bf16_operands(x, q[0].float(), bias, q[1] * (1.0 / 127.0))
    wd = ops.ref_dequantize_nf4(*q, shape, bs) if fmt == "nf4" else ops.ref_dequantize_int4(*q, shape[1])
    return ops.ref_matmul_bf16_operands(x, wd, bias)


def close(y, want, x, w):
    """Equal to float32 summation-order rounding over K bf16 products (exact in float32)."""
    K = x.shape[-1]
    xb, wb = x.to(torch.bfloat16).float(), w.to(torch.bfloat16).float()
    bound = (xb.abs() @ wb.abs().t()) * (K * 2.0 ** -23) * (1 + 1e-3) + 1e-6
    err = (y - want).abs()
    assert bool((err <= bound).all()), f"max err {err.max().item()}"


@needs_amx
@pytest.mark.parametrize("fmt", ["int8", "int4", "nf4"])
@pytest.mark.parametrize("M", [1, 8, 17, 40, 129])
def test_amx_tiles_equal_the_bf16_operand_reference(fmt, M, tiles):
    gen = torch.Generator().manual_seed(M)
    for N, K, bs in SHAPES:
        w = torch.randn(N, K, generator=gen) * 0.05
        x = torch.randn(M, K, generator=gen) * (1 + 10 * torch.rand(M, K, generator=gen) ** 8)
        bias = torch.randn(N, generator=gen) if N % 2 else None
        q = quantize(fmt, w, bs)
        y = matmul(fmt, x, q, (N, K), bs, bias)
        want = oracle(fmt, x, q, (N, K), bs, bias)
        wmag = q[0].float() * (q[1][:, None] / 127.0) if fmt == "int8" else (
            ops.ref_dequantize_nf4(*q, (N, K), bs) if fmt == "nf4" else ops.ref_dequantize_int4(*q, K))
        close(y, want, x, wmag)
        ref_mirror = {"nf4": lambda: ops.ref_matmul_nf4(x, *q, (N, K), bs, bias, bf16=True),
                      "int8": lambda: ops.ref_matmul_int8(x, *q, bias, bf16=True),
                      "int4": lambda: ops.ref_matmul_int4(x, *q, K, bias, bf16=True)}[fmt]()
        torch.testing.assert_close(ref_mirror, want, rtol=1e-6, atol=1e-6)


@needs_amx
@pytest.mark.parametrize("fmt", ["int8", "int4", "nf4"])
def test_amx_rows_do_not_depend_on_threads_or_on_the_other_rows(fmt, tiles):
    gen = torch.Generator().manual_seed(7)
    N, K, bs = 70, 300, 64
    q = quantize(fmt, torch.randn(N, K, generator=gen), bs)
    x = torch.randn(60, K, generator=gen)
    whole = matmul(fmt, x, q, (N, K), bs)
    for threads in (1, 3):
        assert torch.equal(matmul(fmt, x, q, (N, K), bs, num_threads=threads), whole)
    assert torch.equal(matmul(fmt, x[13:30], q, (N, K), bs), whole[13:30])  # 17 rows, other tiles
    assert torch.equal(matmul(fmt, x[:1].expand(20, K).contiguous(), q, (N, K), bs)[19], whole[0])
    assert torch.equal(matmul(fmt, x[:1], q, (N, K), bs)[0], whole[0])  # one row: on the tiles too


@needs_amx
def test_rule_takes_amx_for_the_many_row_q8_matmuls_unless_q8_is_forced_or_amx_is_off():
    K, N = ops.Q8_GEMM_MIN_K, 48
    q = ops.quantize_int4(torch.randn(N, K))
    with ops.use_isa("avx512"), ops.use_amx(True):
        assert ops.amx_enabled()
        short = torch.randn(40, K // 2)  # shorter rows keep float activations (exact), as before
        qs = ops.quantize_int4(torch.randn(N, K // 2))
        assert not ops.bf16_operands(None, 40, K // 2)
        assert torch.equal(ops.matmul_int4(short, *qs, K // 2), ops.matmul_int4(short, *qs, K // 2, q8=False))
        for M in (ops.AMX_MIN_ROWS - 1, ops.AMX_MIN_ROWS, 100):
            x = torch.randn(M, K)
            y = ops.matmul_int4(x, *q, K)
            if M >= ops.AMX_MIN_ROWS:
                close(y, ops.ref_matmul_int4(x, *q, K, bf16=True), x, ops.ref_dequantize_int4(*q, K))
                assert not torch.equal(y, ops.matmul_int4(x, *q, K, q8=False))  # bf16 rounding shows
            else:
                assert torch.equal(y, ops.matmul_int4(x, *q, K, q8=True))
            for q8 in (True, False):  # a forced choice keeps its own path
                forced = ops.matmul_int4(x, *q, K, q8=q8)
                torch.testing.assert_close(forced, ops.ref_matmul_int4(x, *q, K, q8=q8), rtol=1e-4, atol=1e-4)
        x = torch.randn(40, K)
        with ops.use_amx(False):
            assert not ops.amx_enabled() and not ops.bf16_operands(None, 40, K)
            assert torch.equal(ops.matmul_int4(x, *q, K), ops.matmul_int4(x, *q, K, q8=True))
        with ops.use_isa("avx2"):  # AMX sits on top of the avx512 variant only
            assert not ops.amx_enabled()
        assert ops.amx_enabled()


def test_amx_switch_and_its_errors():
    with pytest.raises(TypeError, match="bool"):
        ops.set_amx(1)
    with ops.use_amx(False):
        assert not ops.amx_enabled()
        from mpt_lite.kernels.extension import _C  # the raw entry point refuses bf16 without the tiles
        x, y = torch.randn(20, 64), torch.empty(20, 8)
        cb, scb = ops.quantize_int8(torch.randn(8, 64))
        with pytest.raises(ValueError, match="AMX"):
            _C.matmul_int8(x=x.data_ptr(), m=20, k=64, cb=cb.data_ptr(), scb=scb.data_ptr(), n=8, y=y.data_ptr(),
                           q8=False, bf16=True, num_threads=0)
    if not ops.amx_supported():
        with pytest.raises(ValueError, match="AMX"):
            ops.set_amx(True)
