"""Searched block scales (kernels.search_quantize_int4 / _nf4): the kernel equals its plain-torch
reference bit for bit, never leaves more squared error than the absmax quantizer, and nf4's codes
still dequantize identically in bitsandbytes."""
import pytest
import torch

from mpt_lite import kernels
from mpt_lite.kernels import reference as ref
from mpt_lite.kernels.layouts import nf4_code

SHAPES = [(64, 64), (37, 48), (13, 100), (5, 7), (300, 257), (1, 1)]


def weights(shape, kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        return torch.randn(*shape, generator=g) * 0.02
    if kind == "heavy":  # a few large outliers, as real weight matrices have
        w = torch.randn(*shape, generator=g)
        return w * torch.where(torch.rand(*shape, generator=g) < 0.01, 8.0, 1.0)
    if kind == "uniform":
        return torch.rand(*shape, generator=g) * 2 - 1
    return torch.zeros(*shape)


@pytest.mark.parametrize("kind", ["normal", "heavy", "uniform", "zeros"])
@pytest.mark.parametrize("shape", SHAPES)
def test_int4_kernel_equals_reference(shape, kind):
    w = weights(shape, kind)
    packed, scales = kernels.search_quantize_int4(w)
    rp, rs = ref.ref_search_quantize_int4(w)
    assert torch.equal(packed, rp) and torch.equal(scales, rs)


@pytest.mark.parametrize("blocksize", [64, 128, 256, 6, 96, 200])
@pytest.mark.parametrize("kind", ["normal", "heavy", "uniform", "zeros"])
@pytest.mark.parametrize("shape", SHAPES)
def test_nf4_kernel_equals_reference(shape, kind, blocksize):
    w = weights(shape, kind)
    packed, absmax = kernels.search_quantize_nf4(w, blocksize)
    rp, ra = ref.ref_search_quantize_nf4(w, blocksize)
    assert torch.equal(packed, rp) and torch.equal(absmax, ra)


def test_nf4_values_on_the_code_midpoints():
    """Blocks of 1.0 (the absmax), the 15 midpoints between NF4 code values, and the scaled midpoints that the
    least-squares refits land on: each trial puts values exactly on a midpoint, where "strictly above" decides the
    code. The kernel (its binary search over the midpoints) equals the reference's count of midpoints below."""
    code = nf4_code()
    mids = (code[:-1] + code[1:]) / 2
    rows = []
    for t in (1.0, 1.1, 1.2):
        rows.append(torch.cat([torch.tensor([1.0]), mids / t, -mids / t, code[:16] / t, torch.zeros(1)])[:64])
    w = torch.stack([torch.nn.functional.pad(r, (0, 64 - r.numel())) for r in rows])
    for blocksize in (64, 128):
        packed, absmax = kernels.search_quantize_nf4(w, blocksize)
        rp, ra = ref.ref_search_quantize_nf4(w, blocksize)
        assert torch.equal(packed, rp) and torch.equal(absmax, ra)


def test_bfloat16_input_quantizes_as_its_float32_value():
    w = weights((40, 70), "normal").to(torch.bfloat16)
    for fn in (kernels.search_quantize_int4, kernels.search_quantize_nf4):
        a, b = fn(w), fn(w.float())
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def _block_errors(err, size):
    flat = err.reshape(-1)
    pad = (-flat.numel()) % size
    return torch.cat([flat, flat.new_zeros(pad)]).view(-1, size).sum(1)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", ["normal", "heavy", "uniform"])
def test_searched_int4_error_never_above_absmax(kind, seed):
    w = weights((96, 200), kind, seed)
    K = w.shape[1]
    absmax = kernels.dequantize_int4(*kernels.quantize_int4(w), K)
    searched = kernels.dequantize_int4(*kernels.search_quantize_int4(w), K)
    pad = lambda e: torch.nn.functional.pad(e, (0, (-K) % 32)).view(-1, 32).sum(1)  # per group
    e_abs, e_s = pad((absmax - w) ** 2), pad((searched - w) ** 2)
    assert bool((e_s <= e_abs * (1 + 1e-5) + 1e-12).all())
    assert e_s.sum() < 0.95 * e_abs.sum()  # and it pays: at least 5% less squared error


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", ["normal", "heavy", "uniform"])
def test_searched_nf4_error_never_above_absmax(kind, seed):
    w = weights((96, 200), kind, seed)
    absmax = kernels.dequantize_nf4(*kernels.quantize_nf4(w), w.shape)
    searched = kernels.dequantize_nf4(*kernels.search_quantize_nf4(w), w.shape)
    e_abs, e_s = _block_errors((absmax - w) ** 2, 64), _block_errors((searched - w) ** 2, 64)
    assert bool((e_s <= e_abs * (1 + 1e-5) + 1e-12).all())
    assert e_s.sum() < 0.95 * e_abs.sum()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="NaN or infinite"):
        kernels.search_quantize_int4(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        kernels.search_quantize_nf4(torch.tensor([[float("inf"), 1.0]]))
    with pytest.raises(TypeError):
        kernels.search_quantize_int4(torch.ones(4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="blocksize"):
        kernels.search_quantize_nf4(torch.ones(4, 4), 7)


bnb_f = pytest.importorskip("bitsandbytes.functional")


@pytest.mark.parametrize("shape", [(64, 64), (37, 48), (13, 100), (5, 7)])
def test_searched_nf4_dequantizes_identically_in_bitsandbytes(shape):
    w = weights(shape, "heavy")
    packed, absmax = kernels.search_quantize_nf4(w)
    _, state = bnb_f.quantize_4bit(w.reshape(-1), blocksize=64, quant_type="nf4", compress_statistics=False)
    state.absmax = absmax  # the stored absmax field holds the searched scale
    theirs = bnb_f.dequantize_4bit(packed.reshape(-1, 1), state).reshape(shape)
    assert torch.equal(kernels.dequantize_nf4(packed, absmax, shape), theirs)
