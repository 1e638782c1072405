"""nf4 on the integer path (llama.cpp's IQ4_NL scheme, csrc/cpu/quant_formats.h): q8 activations,
the NF4 codes as 7-bit integers (round(63 * code)), integer dot products per block of 32, the block
absmax / 63 folded in per block. Every ISA variant against ref_matmul_nf4, which is checked against the
formula written out with integer dot products; the shapes that keep float activations; the error
against float-activation nf4; the native decode step with nf4 weights."""
import pytest
import torch

from mpt_lite import ops
from mpt_lite.kernels import quant_ops

ISAS = ops.supported_isas()
# (N, K, blocksize): odd N, K a multiple of the blocksize (the integer path), partial 128-k steps
# (K % 128 == 64, 32), blocks of 32 (4 per 128 k), 64, 128 and 256 (one block over several steps)
SHAPES = [(1, 64, 64), (7, 64, 64), (37, 192, 64), (13, 320, 32), (9, 96, 32), (5, 384, 128), (11, 512, 256),
          (3, 1088, 64), (5, 1056, 32), (4, 2048, 1024)]  # the last two: 4+ rows take steps of 512 k


def close(y, ref, xs, wd):
    """Equal to float32 rounding: the error bound of a K-term float32 dot product."""
    K = xs.shape[-1]
    bound = (xs.float().abs() @ wd.abs().t()) * (K * 2.0 ** -23) + 1e-6
    err = (y.float() - ref.float()).abs()
    assert bool((err <= bound).all()), f"max err {err.max().item()}"


def data(N, K, M, bs, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * (1 + 3 * torch.rand(N, 1, generator=g))
    x = torch.randn(M, K, generator=g) * torch.rand(1, K, generator=g) * 4
    return ops.quantize_nf4(w, bs), x, torch.randn(N, generator=g)


def test_int8_code_table():
    assert ops.NF4_INT_MAX == 63
    assert ops.NF4_INT8 == (-63, -44, -33, -25, -18, -12, -6, 0, 5, 10, 16, 21, 28, 35, 46, 63)
    assert all(abs(63 * c - q) <= 0.5 for c, q in zip(ops.NF4_CODE, ops.NF4_INT8))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M", [3, 12])  # the row kernels and, from 4 rows, the wide ones
def test_kernel_holds_the_same_int8_codes(isa, M):
    # W's row n holds code n % 16 in every position; x one-hot (x = 1: d = 1/127, q = 127), so
    # y[m, n] = NF4_INT8[code] * absmax / 63 exactly as the kernel holds the code.
    N, K, bs = 32, 640, 64
    codes = torch.arange(N) % 16
    w = torch.tensor(ops.NF4_CODE)[codes][:, None].expand(N, K).contiguous() * 3
    w[:, ::bs] = 3.0  # absmax 3 in every block: every other element keeps its code
    packed, absmax = ops.quantize_nf4(w, bs)
    assert torch.equal(ops.ref_dequantize_nf4(packed, absmax, (N, K), bs), w)
    with ops.use_isa(isa):
        y = ops.matmul_nf4(torch.eye(K)[1 : 1 + M * 47 : 47], packed, absmax, (N, K), bs, q8=True)
    # x row m is one-hot at k = 1 + 47 m (never a block's first element)
    want = torch.tensor(ops.NF4_INT8, dtype=torch.float32)[codes] * (3 / 63)
    torch.testing.assert_close(y, want.expand(M, N), rtol=1e-6, atol=0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M", [1, 3, 12, 40])  # pair kernel (1-16 rows), the wide / panel kernels (more)
def test_extreme_codes_against_full_scale_x_do_not_saturate(isa, M):
    # Every weight at code 0 or 15 (-absmax / +absmax) and every x code +-127 with signs chosen so that
    # all products of a row share one sign: the largest integer sums any kernel can meet (a kernel
    # summing two pmaddubsw results in int16 would saturate at 32767 here).
    N, K, bs = 24, 1024, 64
    g = torch.Generator().manual_seed(3)
    sign = torch.where(torch.rand(N, K, generator=g) < 0.5, -1.0, 1.0)
    packed, absmax = ops.quantize_nf4(sign * 2.0, bs)
    xs = torch.where(torch.rand(M, K, generator=g) < 0.5, -1.0, 1.0)
    x = xs.clone()
    x[: min(M, N)] = sign[: min(M, N)]  # row m agrees in sign with weight row m everywhere
    with ops.use_isa(isa):
        y = ops.matmul_nf4(x, packed, absmax, (N, K), bs, q8=True)
    want = x @ (sign * 2.0).t()  # the codes at +-63 are exact: +-absmax
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-3)
    for m in range(min(M, N)):
        assert y[m, m].item() == pytest.approx(2.0 * K, rel=1e-6)


@pytest.mark.parametrize("shape", SHAPES[:5])
def test_reference_is_the_blockwise_integer_formula(shape):
    """ref_matmul_nf4 (q8) = sum_b absmax_b / 63 * sum_{q8 blocks j in b} d_j * dot(NF4_INT8[q], q_j)."""
    N, K, bs = shape
    (packed, absmax), x, bias = data(N, K, 3, bs, sum(shape))
    qx, d = ops.ref_quantize_q8(x)
    p = packed.reshape(-1)
    codes = torch.stack([p >> 4, p & 15], 1).reshape(-1)[: N * K].long()
    wi = torch.tensor(ops.NF4_INT8, dtype=torch.int64)[codes].view(N, K // 32, 32)
    dots = torch.einsum("njk,mjk->mnj", wi, qx.long().view(3, K // 32, 32))  # exact integer dots
    per_q8 = (dots.double() * d.double()[:, None, :]).view(3, N, K // bs, bs // 32).sum(-1)
    want = (per_q8 * (absmax.double().view(N, K // bs) / 63)).sum(-1) + bias.double()
    got = ops.ref_matmul_nf4(x, packed, absmax, (N, K), bs, bias)
    close(got.double(), want, ops.ref_dequantize_q8(x), ops.ref_dequantize_nf4_int8(packed, absmax, (N, K), bs))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M", list(range(1, 17)))
def test_each_variant_matches_reference(isa, M):
    for i, (N, K, bs) in enumerate(SHAPES):
        (packed, absmax), x, bias = data(N, K, M, bs, 10 * M + i)
        for b in (bias, None):
            with ops.use_isa(isa):
                y = ops.matmul_nf4(x, packed, absmax, (N, K), bs, b)
            assert y.shape == (M, N) and y.dtype == torch.float32
            ref = ops.ref_matmul_nf4(x, packed, absmax, (N, K), bs, b)
            close(y, ref, ops.ref_dequantize_q8(x), ops.ref_dequantize_nf4_int8(packed, absmax, (N, K), bs))
            yf = ops.ref_matmul_nf4(x, packed, absmax, (N, K), bs, b, q8=False)
            assert not torch.equal(ref, yf)  # the integer path, not the float one


@pytest.mark.parametrize("isa", ISAS)
def test_shapes_without_whole_blocks_per_row_keep_float_activations(isa):
    # K not a multiple of the blocksize (blocks straddle rows), blocksize 48 (not a power of two)
    # or 16 (under a q8 block), and 17+ rows: float activations, as ref_matmul_nf4 says
    for N, K, bs, M, q8 in [(7, 100, 64, 1, None), (5, 96, 64, 2, True), (6, 96, 48, 1, None),
                            (4, 64, 16, 3, True), (9, 128, 64, 17, None), (9, 128, 64, 4, False)]:
        assert not (ops.nf4_q8_ok(K, bs) and ops.use_q8(q8, M))
        (packed, absmax), x, bias = data(N, K, M, bs, N * K)
        with ops.use_isa(isa), ops.use_amx(False):  # 17 rows: the q8 rule alone
            y = ops.matmul_nf4(x, packed, absmax, (N, K), bs, bias, q8=q8)
        ref = ops.ref_matmul_nf4(x, packed, absmax, (N, K), bs, bias, q8=q8)
        assert torch.equal(ref, ops.ref_matmul_nf4(x, packed, absmax, (N, K), bs, bias, q8=False))
        close(y, ref, x, ops.ref_dequantize_nf4(packed, absmax, (N, K), bs))


def test_bf16_batch_dims_and_thread_counts():
    (packed, absmax), x, bias = data(40, 128, 6, 64, 5)
    xb = x.view(2, 3, 128).to(torch.bfloat16)
    y = ops.matmul_nf4(xb, packed, absmax, (40, 128), bias=bias)
    assert y.shape == (2, 3, 40) and y.dtype == torch.bfloat16
    ref = ops.ref_matmul_nf4(xb.float(), packed, absmax, (40, 128), bias=bias)
    torch.testing.assert_close(y.float(), ref.view(2, 3, 40), rtol=2e-2, atol=2e-2)
    ys = [ops.matmul_nf4(x, packed, absmax, (40, 128), bias=bias, num_threads=t) for t in (1, 2, 3)]
    assert all(torch.equal(ys[0], v) for v in ys[1:])
    with pytest.raises(TypeError, match="q8"):
        ops.matmul_nf4(x, packed, absmax, (40, 128), q8=1)


def test_error_against_float_activation_nf4():
    g = torch.Generator().manual_seed(7)
    N, K, M = 64, 1024, 4
    w = torch.randn(N, K, generator=g) * 0.05
    x = torch.randn(M, K, generator=g) * (1 + 10 * torch.rand(M, K, generator=g) ** 8)  # outliers
    packed, absmax = ops.quantize_nf4(w)
    yi = ops.matmul_nf4(x, packed, absmax, (N, K), q8=True)
    yf = ops.matmul_nf4(x, packed, absmax, (N, K), q8=False)
    # two roundings: x to q8 (|err| <= d / 2 per element) and the codes to 7 bits (<= absmax / 126)
    wd = ops.ref_dequantize_nf4(packed, absmax, (N, K))
    _, d = ops.ref_quantize_q8(x)
    half_step = (d / 2).repeat_interleave(32, dim=1)
    code_err = (ops.ref_dequantize_nf4_int8(packed, absmax, (N, K)) - wd).abs()
    assert bool((code_err <= absmax.repeat_interleave(64).view(N, K) / 126 * (1 + 1e-6)).all())
    bound = half_step @ (wd.abs() + code_err).t() + x.abs() @ code_err.t()
    slack = (x.abs() @ wd.abs().t()) * (2 * K * 2.0 ** -23) + 1e-6
    assert bool(((yi - yf).abs() <= bound + slack).all())
    # here x's q8 rounding alone costs ~5e-5 of cosine and the 7-bit codes ~7e-5 (NF4's own rounding of
    # w: ~4e-3); the model-level figure (cosine of logits, perplexity) is bench_nf4_q8.py quality's
    cos = torch.nn.functional.cosine_similarity(yi.flatten().double(), yf.flatten().double(), dim=0).item()
    assert cos >= 0.9998


# ---- the native decode step with nf4 weights (tests/test_native_step.py's harness) ----

@pytest.mark.parametrize("d_model", [64, 48])
def test_native_step_nf4_on_the_integer_path(d_model):
    """Both paths with nf4 blocks (d_model 64: every K a multiple of 64, the integer path at decode,
    float at the 20- and 30-token prefills; d_model 48: K 48 and 96, float only); q8 rounding can
    differ by one code between the paths (see test_native_step_with_q8_activations_as_shipped)."""
    from checkpoints import quantized
    from test_native_step import FORMATS, SCHEDULE, run_both, tiny

    model = quantized(tiny(d_model=d_model, n_heads=4 if d_model == 64 else 6), *FORMATS["nf4"])
    run_both(model, SCHEDULE, rel=1e-2)


def test_native_step_nf4_differs_from_float_activations_as_the_reference_does():
    """The native step's logits at decode equal model.forward_paged with the integer path and not
    the float-activation nf4 ones (so the native step really runs the q8 kernels)."""
    from mpt_lite.runtime.kv_cache import PagedKVCache, PagedStep
    from mpt_lite.runtime.native_step import build_plan, native_logits
    from test_native_step import FORMATS, quantized, tiny

    model = quantized(tiny(), *FORMATS["nf4"])
    cfg = model.config
    cache = PagedKVCache(cfg.n_layers, cfg.kv_n_heads, cfg.head_dim, block_size=4, num_blocks=16)
    seq = cache.match_prefix([])
    cache.grow(seq, 3)
    step = PagedStep(cache, [seq], [0], [3])
    ids = torch.tensor([5, 9, 2])
    native = native_logits(build_plan(model, cache), ids, step, step.last_rows.to(torch.int64))
    with torch.inference_mode():
        torch_q8 = model.forward_paged(ids, step, step.last_rows)
        quant_ops_use_q8 = quant_ops.use_q8
        try:
            quant_ops.use_q8 = lambda q8, rows, gemm_k=None: False
            torch_float = model.forward_paged(ids, step, step.last_rows)
        finally:
            quant_ops.use_q8 = quant_ops_use_q8
    tol = 1e-2 * torch_q8.abs().max().item()
    assert (native - torch_q8).abs().max().item() <= tol
    assert not torch.equal(torch_q8, torch_float)
