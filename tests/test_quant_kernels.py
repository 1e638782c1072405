"""Quantized formats and matmul kernels: every variant in ops.supported_isas() (and the CUDA
kernels where a GPU is visible) against ref_*."""
import pytest
import torch

from devices import DEVICES, device_of, needs_cuda, running, to, variants
from mpt_lite import ops

ISAS = ops.supported_isas()
VARIANTS = variants(ISAS)
FORMATS = ("int8", "nf4", "int4")
SHAPES = [(1, 1), (7, 5), (33, 31), (64, 64), (40, 96), (13, 100), (97, 257), (200, 320)]  # (N, K)


def quantize(fmt, w):
    if fmt == "int8":
        return ops.quantize_int8(w)
    if fmt == "nf4":
        return ops.quantize_nf4(w)
    return ops.quantize_int4(w)


def matmul(fmt, x, q, shape, bias=None, **kw):
    if fmt == "int8":
        return ops.matmul_int8(x, *q, bias=bias, **kw)
    if fmt == "nf4":
        return ops.matmul_nf4(x, *q, shape, bias=bias, **kw)
    return ops.matmul_int4(x, *q, shape[1], bias=bias, **kw)


def ref_matmul(fmt, x, q, shape, bias=None, **kw):
    """The mirror of what the kernel runs: for int8 / int4 at M <= ops.Q8_MAX_ROWS, q8 activations;
    bf16=True: the AMX tiles' bf16 operands (from ops.AMX_MIN_ROWS rows where ops.amx_enabled())."""
    if fmt == "int8":
        return ops.ref_matmul_int8(x, *q, bias=bias, **kw)
    if fmt == "nf4":
        return ops.ref_matmul_nf4(x, *q, shape, bias=bias, **kw)
    return ops.ref_matmul_int4(x, *q, shape[1], bias=bias, **kw)


def dequantize(fmt, q, shape):
    if fmt == "int8":
        return ops.dequantize_int8(*q), ops.ref_dequantize_int8(*q)
    if fmt == "nf4":
        return ops.dequantize_nf4(*q, shape), ops.ref_dequantize_nf4(*q, shape)
    return ops.dequantize_int4(*q, shape[1]), ops.ref_dequantize_int4(*q, shape[1])


def ref_quantize(fmt, w):
    return {"int8": ops.ref_quantize_int8, "nf4": ops.ref_quantize_nf4, "int4": ops.ref_quantize_int4}[fmt](w)


def close(y, ref, x, wd):
    """Equal to float32 rounding: the error bound of a K-term float32 dot product."""
    K = x.shape[-1]
    bound = (x.float().abs() @ wd.abs().t()) * (K * 2.0 ** -23) + 1e-6
    err = (y.float() - ref.float()).abs()
    assert bool((err <= bound).all()), f"max err {err.max().item()} (bound {bound.min().item()})"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_dequantize_match_reference(device, fmt, shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape))) * 0.1
    w[0, 0] = 0.0
    if shape[0] > 2:
        w[1] = 0.0  # a zero row
    q = tuple(t.cpu() for t in quantize(fmt, w.to(device)))
    for got, want in zip(q, ref_quantize(fmt, w)):
        assert torch.equal(got, want)
    d, rd = dequantize(fmt, to(device, *q), shape)
    d, rd = d.cpu(), rd.cpu()
    assert torch.equal(d, rd)
    err = (d - w).abs().max().item()
    assert err <= {"int8": 0.5 / 127, "nf4": 0.25, "int4": 1.0 / 8}[fmt] * w.abs().max().item() + 1e-7


def cuda_gemm_reference(fmt, x, q, wd, bias):
    """The CUDA GEMM (M > ops.CUDA_GEMV_MAX_M): bf16 operands (int8: the codes, then scb / 127)."""
    if fmt == "int8":
        return ops.ref_matmul_bf16_operands(x, q[0].float(), bias, q[1] * (1.0 / 127.0))
    return ops.ref_matmul_bf16_operands(x, wd, bias)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("M", [1, 2, 3, 7, 8, 9, 16, 33, 128, 513])
def test_matmul_matches_reference(variant, fmt, M):
    dev = device_of(variant)
    gen = torch.Generator().manual_seed(M)
    shapes = [(7, 5), (37, 64), (101, 96), (13, 257)] if M < 128 else [(19, 100), (101, 96)]
    if dev == "cuda":
        shapes += [(130, 512), (64, 48)]  # several GEMM tiles; int8's K % 32 == 16 tail
    for N, K in shapes:
        w = torch.randn(N, K, generator=gen)
        x = torch.randn(M, K, generator=gen)
        bias = torch.randn(N, generator=gen)
        q = quantize(fmt, w)
        wd = dequantize(fmt, q, (N, K))[1]
        with running(variant):
            y = matmul(fmt, x.to(dev), to(dev, *q), (N, K), bias.to(dev)).cpu()
            amx = {"bf16": True} if dev == "cpu" and ops.bf16_operands(None, M, K) else {}
        assert y.shape == (M, N) and y.dtype == torch.float32
        if dev == "cuda" and M > ops.CUDA_GEMV_MAX_M:
            xb = x.to(torch.bfloat16).float()
            close(y, cuda_gemm_reference(fmt, x, q, wd, bias), xb, wd.to(torch.bfloat16).float() * 1.01)
        else:
            # the CUDA GEMV takes float activations; the CPU kernels q8 ones at few rows
            close(y, ref_matmul(fmt, x, q, (N, K), bias, **({"q8": False} if dev == "cuda" else amx)), x, wd)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_bf16_activations_and_batch_dims(variant, fmt):
    dev = device_of(variant)
    w = torch.randn(48, 64)
    q = quantize(fmt, w)
    for lead in ((2, 3), (4, 5)):  # 6 rows (CUDA: GEMV) and 20 rows (CUDA: GEMM)
        x = torch.randn(*lead, 64).to(torch.bfloat16)
        with running(variant):
            y = matmul(fmt, x.to(dev), to(dev, *q), (48, 64)).cpu()
            amx = {"bf16": True} if dev == "cpu" and ops.bf16_operands(None, x.numel() // 64, 64) else {}
        assert y.shape == (*lead, 48) and y.dtype == torch.bfloat16
        if variant == "cuda" and x.numel() // 64 > ops.CUDA_GEMV_MAX_M and fmt != "int8":
            # the CUDA GEMM rounds the dequantized 4-bit weight to bfloat16 before the tensor cores
            ref = ops.ref_matmul_bf16_operands(x.float(), dequantize(fmt, q, (48, 64))[1])
        else:
            ref = ref_matmul(fmt, x.float(), q, (48, 64), **({"q8": False} if variant == "cuda" else amx))
        torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_deterministic_across_runs_and_thread_counts(fmt):
    w = torch.randn(300, 200)
    q = quantize(fmt, w)
    prev = ops.num_threads()
    try:
        for M in (1, 3, 40):
            x = torch.randn(M, 200)
            outs = []
            for threads in (1, 2, 3):
                ops.set_num_threads(threads)
                outs += [matmul(fmt, x, q, (300, 200)), matmul(fmt, x, q, (300, 200))]
            assert all(torch.equal(outs[0], o) for o in outs[1:])
    finally:
        ops.set_num_threads(prev)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize_rows(device, fmt):
    w = torch.randn(50, 70)
    q = to(device, *quantize(fmt, w))
    full = dequantize(fmt, q, (50, 70))[0]
    ids = torch.tensor([[3, 0], [49, 3]], device=device)
    if fmt == "int8":
        rows = ops.dequantize_rows_int8(*q, ids)
    elif fmt == "nf4":
        rows = ops.dequantize_rows_nf4(*q, (50, 70), ids)
    else:
        rows = ops.dequantize_rows_int4(*q, 70, ids)
    assert torch.equal(rows, full[ids])
    with pytest.raises(IndexError, match="ids"):
        ops.dequantize_rows_int8(*ops.quantize_int8(w.to(device)), torch.tensor([50], device=device))


@needs_cuda
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_matmul_deterministic(fmt):
    w = torch.randn(300, 200, device="cuda")
    q = quantize(fmt, w)
    for M in (1, 3, 40):
        x = torch.randn(M, 200, device="cuda")
        a, b = matmul(fmt, x, q, (300, 200)), matmul(fmt, x, q, (300, 200))
        assert torch.equal(a, b)


@needs_cuda
def test_cuda_mixed_devices_raise():
    w = torch.randn(8, 16)
    cb, scb = ops.quantize_int8(w.cuda())
    with pytest.raises(ValueError, match="x must be on cuda"):
        ops.matmul_int8(torch.randn(2, 16), cb, scb)
    with pytest.raises(ValueError, match="scb must be on cuda"):
        ops.matmul_int8(torch.randn(2, 16, device="cuda"), cb, scb.cpu())
    with pytest.raises(ValueError, match="bias must be on cuda"):
        ops.matmul_int8(torch.randn(2, 16, device="cuda"), cb, scb, bias=torch.randn(8))


def test_bad_input_raises_clear_errors():
    w = torch.randn(8, 16)
    cb, scb = ops.quantize_int8(w)
    with pytest.raises(TypeError, match="x"):
        ops.matmul_int8(torch.randn(2, 16).double(), cb, scb)
    with pytest.raises(ValueError, match="x"):
        ops.matmul_int8(torch.randn(2, 15), cb, scb)
    with pytest.raises(TypeError, match="cb"):
        ops.matmul_int8(torch.randn(2, 16), cb.float(), scb)
    with pytest.raises(ValueError, match="scb"):
        ops.matmul_int8(torch.randn(2, 16), cb, scb[:4])
    with pytest.raises(ValueError, match="bias"):
        ops.matmul_int8(torch.randn(2, 16), cb, scb, bias=torch.randn(3))
    with pytest.raises(TypeError, match="w"):
        ops.quantize_nf4(torch.ones(4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="NaN"):
        ops.quantize_int4(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="blocksize"):
        ops.quantize_nf4(w, blocksize=63)
    p, a = ops.quantize_nf4(w)
    with pytest.raises(ValueError, match="packed"):
        ops.matmul_nf4(torch.randn(1, 16), p[:-1], a, (8, 16))
    with pytest.raises(TypeError, match="shape"):
        ops.matmul_nf4(torch.randn(1, 16), p, a, 8)
    p4, s4 = ops.quantize_int4(w)
    with pytest.raises(ValueError, match="scales"):
        ops.matmul_int4(torch.randn(1, 16), p4, s4[:, :0], 16)
    with pytest.raises(ValueError, match="x"):
        ops.matmul_int4(torch.randn(1, 16, device="meta"), p4, s4, 16)


# ---- int4 group scales in IEEE half (format version 3: 4.5 bits per weight) ----

def _half_edge_scales():
    """Every finite half, the midpoints between neighbours (ties: round to even), values just off
    them, the overflow clamp and the subnormal range, both signs."""
    h = torch.arange(1, 0x7C00, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    mid = (h[:-1] + h[1:]) / 2
    edge = torch.tensor([65504.0, 65519.0, 65520.0, 1e5, 1e30, 2.0 ** -25, 2.0 ** -26, 1.5 * 2.0 ** -25,
                         2.0 ** -14 * (1 - 2.0 ** -12)])
    d = torch.cat([h, mid, mid * (1 + 2.0 ** -20), mid * (1 - 2.0 ** -20), edge])
    return torch.cat([d, -d])


@pytest.mark.parametrize("quantizer", ["absmax", "search"])
def test_int4_scales_are_half_rounded_to_nearest_even(quantizer):
    """The stored scale is half(d) (clamped to +-65504, round to nearest even, subnormals kept), bit
    for bit the reference's, and the codes are those of the rounded scale."""
    d = _half_edge_scales()
    w = torch.zeros(d.numel(), 32)
    w[:, 0] = d * -8  # the absmax quantizer's scale is exactly d (x8 is exact in float32)
    w[:, 1] = d * 3.3
    fn, ref = ((ops.quantize_int4, ops.ref_quantize_int4) if quantizer == "absmax"
               else (ops.search_quantize_int4, ops.ref_search_quantize_int4))
    p, s = fn(w)
    pr, sr = ref(w)
    assert s.dtype == torch.float16 and s.shape == (d.numel(), 1)
    assert torch.equal(s, sr) and torch.equal(p, pr)
    if quantizer == "absmax":
        assert torch.equal(s[:, 0], d.clamp(-65504, 65504).half())
        # the codes are those of the rounded scale: where half keeps 11 significant bits (normal
        # range, not clamped), -8d is within 2^-11 of -8 * half(d) and takes code 0 (-8)
        normal = (d.abs() <= 65504) & (s[:, 0].float().abs() >= 2.0 ** -14)
        assert bool(((p[normal, 0] & 15) == 0).all())


@pytest.mark.parametrize("isa", ISAS)
def test_int4_half_scale_kernels_match_reference(isa):
    """dequantize / rows / matmul (float and q8 activations) read the half scales as the reference."""
    g = torch.Generator().manual_seed(11)
    N, K = 37, 200
    w = torch.randn(N, K, generator=g) * torch.logspace(-6, 3, N)[:, None]
    p, s = ops.search_quantize_int4(w)
    wd = ops.ref_dequantize_int4(p, s, K)
    ids = torch.tensor([0, 36, 5, 5])
    with ops.use_isa(isa):
        assert torch.equal(ops.dequantize_int4(p, s, K), wd)
        assert torch.equal(ops.dequantize_rows_int4(p, s, K, ids), wd[ids])
        for M, q8 in [(1, True), (3, True), (5, False), (20, False), (20, True)]:
            x = torch.randn(M, K, generator=g)
            close(ops.matmul_int4(x, p, s, K, q8=q8), ops.ref_matmul_int4(x, p, s, K, q8=q8), x, wd)


def test_int4_float32_scales_are_rejected_with_the_conversion():
    p, s = ops.quantize_int4(torch.randn(8, 64))
    for call in (lambda: ops.matmul_int4(torch.randn(1, 64), p, s.float(), 64),
                 lambda: ops.dequantize_int4(p, s.float(), 64),
                 lambda: ops.dequantize_rows_int4(p, s.float(), 64, torch.tensor([1]))):
        with pytest.raises(TypeError, match="float16.*version 3.*int4_half_scales"):
            call()
    with pytest.raises(TypeError, match="scales must have dtype torch.float16"):
        ops.matmul_int4(torch.randn(1, 64), p, s.bfloat16(), 64)
    assert torch.equal(ops.int4_half_scales(s.float()), s)  # half -> float32 -> half is exact


def test_int4_costs_4_5_bits_per_weight():
    from mpt_lite.quant.formats import weight_format

    fmt = weight_format("int4")
    assert fmt.nbytes(2048, 2048, 64) * 8 / (2048 * 2048) == 4.5
    assert fmt.nbytes(8192, 2048, 64) * 8 / (8192 * 2048) == 4.5


# ---- q8 activations (int8 / int4 weights): x quantized to int8 per block of 32 along K ----

Q8_FORMATS = ("int8", "int4")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", Q8_FORMATS)
@pytest.mark.parametrize("q8", [True, False])
@pytest.mark.parametrize("M", [1, 2, 3, 4, 7, 8, 9, 16, 33])
def test_matmul_each_activation_path_matches_its_mirror(isa, fmt, q8, M):
    gen = torch.Generator().manual_seed(100 + M)
    for N, K in [(7, 5), (37, 64), (21, 96), (13, 257), (9, 300), (5, 640), (3, 1100)]:
        w = torch.randn(N, K, generator=gen)
        x = torch.randn(M, K, generator=gen) * torch.rand(1, K, generator=gen) * 4
        bias = torch.randn(N, generator=gen)
        q = quantize(fmt, w)
        wd = dequantize(fmt, q, (N, K))[1]
        with ops.use_isa(isa):
            y = matmul(fmt, x, q, (N, K), bias, q8=q8)
        xs = ops.ref_dequantize_q8(x) if q8 else x
        close(y, ref_matmul(fmt, x, q, (N, K), bias, q8=q8), xs, wd)


def test_auto_activation_path_follows_row_count():
    """The q8 rule alone (the AMX tiles off; tests/test_amx_gemm.py checks the rule with them)."""
    with ops.use_amx(False):
        q8_rule_follows_row_count()


def q8_rule_follows_row_count():
    w = torch.randn(40, 96)
    q = ops.quantize_int4(w)
    for M in (1, ops.Q8_MAX_ROWS, ops.Q8_MAX_ROWS + 1):
        x = torch.randn(M, 96)
        want_q8 = M <= ops.Q8_MAX_ROWS
        assert torch.equal(ops.matmul_int4(x, *q, 96), ops.matmul_int4(x, *q, 96, q8=want_q8))
        assert torch.equal(ops.ref_matmul_int4(x, *q, 96), ops.ref_matmul_int4(x, *q, 96, q8=want_q8))
    with pytest.raises(TypeError, match="q8"):
        ops.matmul_int8(torch.randn(1, 96), *ops.quantize_int8(w), q8=1)


def test_auto_activation_path_at_long_rows():
    """From Q8_GEMM_MIN_K in_features on, int8 / int4 / nf4 take q8 at any row count (the GEMM tiles),
    where the AMX tiles do not take them first."""
    with ops.use_amx(False):
        q8_rule_at_long_rows()


def q8_rule_at_long_rows():
    K, M = ops.Q8_GEMM_MIN_K, ops.Q8_MAX_ROWS + 3
    w, x = torch.randn(24, K), torch.randn(M, K)
    q4, q8w, qn = ops.quantize_int4(w), ops.quantize_int8(w), ops.quantize_nf4(w)
    assert torch.equal(ops.matmul_int4(x, *q4, K), ops.matmul_int4(x, *q4, K, q8=True))
    assert torch.equal(ops.matmul_int8(x, *q8w), ops.matmul_int8(x, *q8w, q8=True))
    assert torch.equal(ops.matmul_nf4(x, *qn, (24, K)), ops.matmul_nf4(x, *qn, (24, K), q8=True))
    assert not torch.equal(ops.matmul_nf4(x, *qn, (24, K)), ops.matmul_nf4(x, *qn, (24, K), q8=False))
    torch.testing.assert_close(ops.ref_matmul_nf4(x, *qn, (24, K)), ops.ref_matmul_nf4(x, *qn, (24, K), q8=True),
                               rtol=0, atol=0)
    assert not torch.equal(ops.matmul_int4(x, *q4, K), ops.matmul_int4(x, *q4, K, q8=False))
    short = torch.randn(M, K // 2)
    q4s = ops.quantize_int4(torch.randn(24, K // 2))
    assert torch.equal(ops.matmul_int4(short, *q4s, K // 2), ops.matmul_int4(short, *q4s, K // 2, q8=False))
    torch.testing.assert_close(ops.ref_matmul_int4(x, *q4, K), ops.ref_matmul_int4(x, *q4, K, q8=True), rtol=0, atol=0)


@pytest.mark.parametrize("isa", ISAS)
def test_kernel_quantizes_activations_exactly_like_the_reference(isa):
    # With W = I (int8 codes 127, scale 1) the q8 kernel returns x as it quantized it; rounding ties
    # (x / d = k + 0.5), zeros, a zero block, tiny and huge blocks must all agree with ref_quantize_q8.
    K = 133
    x = torch.randn(3, K) * torch.logspace(-30, 30, K)
    x[0, :32] = torch.arange(32) - 15.5  # amax 15.5: d = 15.5 / 127; ties where x / d lands on .5
    x[0, 5] = 127 * 0.5 / 127  # with d = 1 below
    x[1, 32:64] = 0.0
    x[2, 64:96] = torch.tensor([127.0] + [2.5, -3.5, 0.5, -0.5] * 7 + [1.5, 4.5, 6.5])
    cb, scb = ops.quantize_int8(torch.eye(K))
    with ops.use_isa(isa):
        y = ops.matmul_int8(x, cb, scb, q8=True)
    want = ops.ref_dequantize_q8(x)
    assert torch.allclose(y, want, rtol=2 ** -20, atol=0)
    q, d = ops.ref_quantize_q8(x)
    assert q[2, 65:69].tolist() == [2, -4, 0, 0]  # half to even
    assert bool((q[1, 32:64] == 0).all()) and d[1, 1].item() == 0.0


@pytest.mark.parametrize("fmt", Q8_FORMATS)
def test_q8_error_bound_against_float_activations(fmt):
    gen = torch.Generator().manual_seed(7)
    N, K, M = 64, 1000, 4
    w = torch.randn(N, K, generator=gen) * 0.05
    x = torch.randn(M, K, generator=gen) * (1 + 10 * torch.rand(M, K, generator=gen) ** 8)  # outliers
    q = quantize(fmt, w)
    wd = dequantize(fmt, q, (N, K))[1]
    y8 = matmul(fmt, x, q, (N, K), q8=True)
    yf = matmul(fmt, x, q, (N, K), q8=False)
    _, d = ops.ref_quantize_q8(x)
    half_step = (d / 2).repeat_interleave(32, dim=1)[:, :K]  # |x - q * d| <= d / 2 per element
    assert bool(((x - ops.ref_dequantize_q8(x)).abs() <= half_step).all())
    bound = half_step @ wd.abs().t()
    slack = (x.abs() @ wd.abs().t()) * (2 * K * 2.0 ** -23) + 1e-6
    assert bool(((y8 - yf).abs() <= bound + slack).all())
    # relative form: 1/254 of sum_k |W| * (block amax)
    assert bool((bound <= (d * 127 / 254).repeat_interleave(32, dim=1)[:, :K] @ wd.abs().t() * (1 + 1e-5)).all())
    cos = torch.nn.functional.cosine_similarity(y8.flatten().double(), yf.flatten().double(), dim=0).item()
    assert cos >= 0.9999


@pytest.mark.parametrize("K", [1, 7, 8, 9, 31, 257])
def test_quantize_int8_equals_the_reference_codes(K):
    """The vectorised quantizer against ref_quantize_int8 bit for bit: vector bodies and tails, a zero row,
    halfway values (round half to even: a row whose largest |w| is 127 has w * 127 / amax = w), the
    clamp at +-127, and rows of tiny and huge magnitudes."""
    g = torch.Generator().manual_seed(K)
    w = torch.randn(12, K, generator=g)
    w[0] = 0.0
    halves = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5])
    w[1] = halves.repeat(K // 8 + 1)[:K]
    w[1, -1] = 127.0
    w[2] *= 1e-30
    w[3] *= 1e30
    w[4, K // 2] = -1e4  # one large value: the rest round to small codes
    cb, scb = ops.quantize_int8(w)
    want_cb, want_scb = ops.ref_quantize_int8(w)
    assert torch.equal(scb, want_scb)
    assert torch.equal(cb, want_cb)
    assert int(cb.abs().max()) == 127 and not cb[0].any()
