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


def matmul(fmt, x, q, shape, bias=None):
    if fmt == "int8":
        return ops.matmul_int8(x, *q, bias=bias)
    if fmt == "nf4":
        return ops.matmul_nf4(x, *q, shape, bias=bias)
    return ops.matmul_int4(x, *q, shape[1], bias=bias)


def ref_matmul(fmt, x, q, shape, bias=None):
    if fmt == "int8":
        return ops.ref_matmul_int8(x, *q, bias=bias)
    if fmt == "nf4":
        return ops.ref_matmul_nf4(x, *q, shape, bias=bias)
    return ops.ref_matmul_int4(x, *q, shape[1], bias=bias)


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
        assert y.shape == (M, N) and y.dtype == torch.float32
        if dev == "cuda" and M > ops.CUDA_GEMV_MAX_M:
            xb = x.to(torch.bfloat16).float()
            close(y, cuda_gemm_reference(fmt, x, q, wd, bias), xb, wd.to(torch.bfloat16).float() * 1.01)
        else:
            close(y, ref_matmul(fmt, x, q, (N, K), bias), x, wd)


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
        assert y.shape == (*lead, 48) and y.dtype == torch.bfloat16
        if variant == "cuda" and x.numel() // 64 > ops.CUDA_GEMV_MAX_M and fmt != "int8":
            # the CUDA GEMM rounds the dequantized 4-bit weight to bfloat16 before the tensor cores
            ref = ops.ref_matmul_bf16_operands(x.float(), dequantize(fmt, q, (48, 64))[1])
        else:
            ref = ref_matmul(fmt, x.float(), q, (48, 64))
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
