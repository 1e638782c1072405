"""int6, the tied embedding's 6-bit format (embedding_bits=6; csrc/cpu/quant_int6.h): the kernels against the
plain-torch reference (the codes bit for bit, the matmul on every ISA to float32 rounding), the error bound
of the format against the float weight, bad input, and a model loaded with it against its float simulation."""
import pytest
import torch
import torch.nn.functional as F

import mpt_lite
from mpt_lite import kernels, ops

# K: whole pairs of groups, a lone last group, tails inside a group; N: a multiple of the AVX-512 kernel's 4 rows,
# and not
SHAPES = [(37, 2048), (40, 96), (50, 70), (8, 32), (3, 100), (13, 1)]


def weight(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[0, : min(k, 5)] = torch.tensor([0.0, -1.0, 1.0, 0.5, -0.25])[: min(k, 5)]  # exact extremes, ties
    if n > 2:
        w[2] = 0.0  # a row of zeros: scales 0
    return w


@pytest.mark.parametrize("n,k", SHAPES)
def test_codes_equal_the_reference_bit_for_bit(n, k):
    w = weight(n, k)
    codes, scales = ops.quantize_int6(w)
    ref_codes, ref_scales = ops.ref_quantize_int6(w)
    assert codes.shape == (n, -(-k // 32) * 24) and scales.dtype == torch.float16
    assert torch.equal(codes, ref_codes) and torch.equal(scales, ref_scales)
    full = ops.dequantize_int6(codes, scales, k)
    assert torch.equal(full, ops.ref_dequantize_int6(codes, scales, k))
    ids = torch.tensor([[n - 1, 0], [n // 2, n - 1]])
    assert torch.equal(ops.dequantize_rows_int6(codes, scales, k, ids), full[ids])


@pytest.mark.parametrize("n,k", SHAPES)
def test_error_is_at_most_half_a_step(n, k):
    """Independent of the codes' layout: each weight within half its group's step of the float value, the step
    being the group's largest magnitude / 32 rounded to half; within a step where the value is past 31.5 steps
    (the largest magnitude maps to -32 steps, so its opposite sign clamps at +31)."""
    w = weight(n, k, seed=1)
    err = (ops.dequantize_int6(*ops.quantize_int6(w), k) - w).abs()
    pad = -(-k // 32) * 32
    grouped = F.pad(w, (0, pad - k)).view(n, -1, 32)
    step = (grouped.abs().amax(dim=2) / 32).half().float().repeat_interleave(32, dim=1)[:, :k]
    bound = torch.where(w.abs() <= 31.5 * step, 0.5 * step, step)
    assert bool((err <= bound * (1 + 1e-3) + 1e-12).all())


@pytest.mark.parametrize("isa", kernels.supported_isas())
@pytest.mark.parametrize("n,k", SHAPES)
def test_matmul_equals_the_reference_on_every_isa(isa, n, k):
    w = weight(n, k, seed=2)
    codes, scales = ops.quantize_int6(w)
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(n, generator=g)
    with kernels.use_isa(isa):
        for m in (1, 2, 3, 5, 9, 17):  # the AVX-512 kernel: x rows in tiles of 4 and tails; from 8, rows in lanes
            x = torch.randn(m, k, generator=g)
            got = ops.matmul_int6(x, codes, scales, k, bias)
            ref = ops.ref_matmul_int6(x, codes, scales, k, bias)
            scale = ops.ref_dequantize_q8(x).abs() @ ops.ref_dequantize_int6(codes, scales, k).abs().t()
            assert (got - ref).abs().max() <= 1e-5 * (scale.max() + 1), (isa, m)
        # batched leading dimensions and bfloat16 activations
        x3 = torch.randn(2, 3, k, generator=g)
        assert ops.matmul_int6(x3, codes, scales, k).shape == (2, 3, n)
        assert ops.matmul_int6(x3.bfloat16(), codes, scales, k).dtype == torch.bfloat16


def test_bad_input_names_the_problem():
    codes, scales = ops.quantize_int6(weight(8, 64))
    with pytest.raises(TypeError, match="codes"):
        ops.matmul_int6(torch.randn(1, 64), codes.to(torch.int8), scales, 64)
    with pytest.raises(TypeError, match="scales"):
        ops.matmul_int6(torch.randn(1, 64), codes, scales.float(), 64)
    with pytest.raises(ValueError, match="codes must have shape"):
        ops.matmul_int6(torch.randn(1, 96), codes, scales, 96)
    with pytest.raises(ValueError, match="in_features=64"):
        ops.matmul_int6(torch.randn(1, 63), codes, scales, 64)
    with pytest.raises(IndexError, match="ids"):
        ops.dequantize_rows_int6(codes, scales, 64, torch.tensor([8]))
    with pytest.raises(ValueError, match="NaN"):
        ops.quantize_int6(torch.full((2, 32), float("nan")))


def test_model_with_an_int6_embedding_matches_its_simulation(tmp_path):
    """load(embedding_bits=6): the tied matrix at int6 in both roles, everything else as bits=4 makes it; logits
    as the float model with the dequantized weights computes them (q8 activations for the quantized matmuls)."""
    from test_quant_model import cosine, simulate, small_config

    torch.manual_seed(0)
    mpt_lite.MptForCausalLM(small_config(d_model=96, n_heads=4)).eval().save_pretrained(tmp_path)
    q = mpt_lite.load(tmp_path, embedding_bits=6)
    assert q.transformer.wte.quant_type == "int6" and q.transformer.blocks[0].attn.Wqkv.quant_type == "int4"
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(4))
    assert cosine(q(ids).logits, simulate(q)(ids).logits) >= 0.999
    q8 = mpt_lite.load(tmp_path)  # the default int8 embedding: int6's logits close to it
    assert cosine(q(ids).logits, q8(ids).logits) >= 0.999
    assert q.generate(ids[:1], max_new_tokens=5, do_sample=False).shape == (1, 14)


def test_cuda_loads_refuse_int6(tmp_path, monkeypatch):
    """There is no CUDA int6 kernel: device="cuda" with embedding_bits=6, or with a folder saved with an int6
    embedding, is refused at load (before any weight is read), not at the first forward."""
    from mpt_lite.hub import loading
    from test_quant_model import small_config

    torch.manual_seed(0)
    mpt_lite.MptForCausalLM(small_config()).eval().save_pretrained(tmp_path / "f")
    mpt_lite.load(tmp_path / "f", embedding_bits=6).save_pretrained(tmp_path / "q6")
    monkeypatch.setattr(loading, "check_device", lambda device: torch.device("cuda"))
    with pytest.raises(ValueError, match="int6.*CPU format"):
        mpt_lite.load(tmp_path / "f", embedding_bits=6, device="cuda")
    with pytest.raises(ValueError, match="int6.*CPU format"):
        mpt_lite.load(tmp_path / "q6", device="cuda")
