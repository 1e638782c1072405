"""The pool's row ops (kernels.row_ops: GELU in every CPU variant, layer norm, residual add), which the
native step and forward() on the CPU use, against torch's in float64."""
import pytest
import torch

from mpt_lite import ops
from mpt_lite.kernels import row_ops

ISAS = ops.supported_isas()


class ThreadCount:
    """The kernel pool's size for a block, then back to the default."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        ops.set_num_threads(self.n)

    def __exit__(self, *exc):
        ops.set_num_threads(0)


def gelu(x):
    return row_ops.gelu_(x.clone())


@pytest.mark.parametrize("isa", ISAS)
def test_gelu_matches_torch_erf_gelu(isa):
    g = torch.Generator().manual_seed(0)
    # a length that is not a multiple of any vector width, so the tails run too
    x = torch.cat([torch.linspace(-12.0, 12.0, 20_001), torch.randn(4_099, generator=g) * 3,
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0])])
    with ops.use_isa(isa):
        got = gelu(x)
    want = torch.nn.functional.gelu(x.double())
    # the vector erf (Abramowitz & Stegun 7.1.26) is within 1.5e-7 of erf: gelu within |x| / 2 of that
    err = (got.double() - want).abs() / torch.clamp(x.double().abs(), min=1.0)
    assert err.max().item() <= 2e-7, f"{isa}: {err.max().item():.3g}"
    assert torch.equal(gelu(x[:0]), x[:0])


def test_gelu_rejects_other_dtypes_and_strided_tensors():
    with pytest.raises((TypeError, ValueError), match="x"):
        gelu(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="contiguous"):
        row_ops.gelu_(torch.zeros(4, 4).t())


@pytest.mark.parametrize("d", [2048, 77, 8])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_matches_torch_in_float64(d, bias):
    """Rows with a large common offset (the case where one-pass variance formulas lose digits), on 1 and 2
    threads; a length that is not a multiple of 8 exercises the tails."""
    g = torch.Generator().manual_seed(d)
    x = torch.randn(300, d, generator=g) * 3 + 50
    x[7] = 0  # a constant row: variance 0, output the bias
    w, b = torch.randn(d, generator=g), torch.randn(d, generator=g) if bias else None
    want = torch.nn.functional.layer_norm(x.double(), (d,), w.double(), None if b is None else b.double(), 1e-5)
    for threads in (1, 2):
        with ThreadCount(threads):
            got = row_ops.layer_norm(x.view(3, 100, d), w, b, 1e-5)
        assert got.shape == (3, 100, d)
        torch.testing.assert_close(got.view(300, d).double(), want, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="weight has 5 elements"):
        row_ops.layer_norm(x, torch.ones(5), None, 1e-5)


def test_add_matches_torch_and_checks_shapes():
    g = torch.Generator().manual_seed(0)
    for n in (10, 100_003):  # inline, and on the pool
        x, y = torch.randn(n, generator=g), torch.randn(n, generator=g)
        want = x.double() + y.double()
        assert row_ops.add_(x, y) is x
        torch.testing.assert_close(x.double(), want, atol=0, rtol=6e-8)
    with pytest.raises(ValueError, match="differ in shape"):
        row_ops.add_(torch.zeros(4), torch.zeros(5))


def test_applies_only_where_autograd_has_nothing_to_track():
    x = torch.zeros(3)
    assert row_ops.applies(x, None)
    assert not row_ops.applies(x.double())
    w = torch.zeros(3, requires_grad=True)
    assert not row_ops.applies(x, w)
    with torch.no_grad():
        assert row_ops.applies(x, w)


def test_split_columns_matches_torch_split():
    x = torch.randn(2, 37, 12, generator=torch.Generator().manual_seed(0))
    got = row_ops.split_columns(x, [6, 3, 3])
    for a, b in zip(got, x.split([6, 3, 3], dim=-1)):
        assert a.is_contiguous() and torch.equal(a, b)
    with pytest.raises(ValueError, match="add up"):
        row_ops.split_columns(x, [6, 3])
