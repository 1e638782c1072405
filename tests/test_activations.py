"""The native step's GELU (erf form) in every CPU variant against torch's, in float64."""
import pytest
import torch

from mpt_lite import ops
from mpt_lite.kernels.decode_step import gelu

ISAS = ops.supported_isas()


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


def test_gelu_rejects_other_dtypes():
    with pytest.raises((TypeError, ValueError), match="x"):
        gelu(torch.zeros(4, dtype=torch.float64))
