"""int4 with scales over groups of 64, 128 or 256 in_features (group_size; csrc/cpu/quant_formats.h): the
quantizers against the format's definition and the plain-torch reference, dequantization, the matmuls of every
ISA and layout (the rows8 kernels read the wider groups, the others a per-32 copy of the scales) against the
reference, and a model loaded with group_size: close to its weights-only simulation, saved and reloaded exactly,
the native step equal to the torch path."""
import copy

import pytest
import torch

from test_native_step import SCHEDULE, assert_engine_greedy_tokens_identical, run_both, tiny
from test_quant_model import _saved_meta, float_ckpt, load, simulate  # noqa: F401 (a fixture)

import mpt_lite
from mpt_lite import ops
from mpt_lite.quant import QuantLinear

ISAS = ops.supported_isas()
GROUPS = [64, 128, 256]
SHAPES = [(8, 64), (24, 100), (40, 1000), (136, 2080), (16, 4096)]  # (N, K): partial groups, one, many


def _w(N, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, K, generator=g) * 0.05 * (1 + 4 * torch.rand(N, K, generator=g) ** 6)


def _definition(w, group):
    """The format by its definition, element by element in float32: each group's d = half(m / -8) (m its value of
    largest magnitude, the first on ties), codes min(15, floor(x / d + 8.5)), values (code - 8) * d."""
    N, K = w.shape
    out = torch.empty(N, K)
    for n in range(N):
        for c in range(0, K, group):
            x = w[n, c:c + group]
            m = x[x.abs().argmax()]
            d = (m / -8.0).half().float()
            codes = torch.floor(x / d + 8.5).clamp(0, 15) if d != 0 else torch.full_like(x, 8.0)
            out[n, c:c + group] = (codes - 8) * d
    return out


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("N, K", SHAPES[:3])
def test_absmax_quantizer_is_the_definition(group, N, K):
    w = _w(N, K)
    packed, scales = ops.quantize_int4(w, group=group)
    assert packed.shape == (N, ops.int4_groups(K) * 16) and scales.shape == (N, -(-K // group))
    want = _definition(w, group)
    assert torch.allclose(ops.dequantize_int4(packed, scales, K), want, rtol=0, atol=1e-6)
    rp, rs = ops.ref_quantize_int4(w, group)
    assert torch.equal(rp, packed) and torch.equal(rs, scales)


@pytest.mark.parametrize("group", [32] + GROUPS)
@pytest.mark.parametrize("N, K", SHAPES)
def test_searched_quantizer_equals_reference_bit_for_bit(group, N, K):
    w = _w(N, K, seed=1)
    packed, scales = ops.search_quantize_int4(w, group=group)
    rp, rs = ops.ref_search_quantize_int4(w, group)
    assert torch.equal(packed, rp) and torch.equal(scales, rs)
    # one scale per group: the dequantized weight is (code - 8) x its group's scale
    deq = ops.dequantize_int4(packed, scales, K)
    d = scales.float().repeat_interleave(group, dim=1)[:, :K]
    codes = deq / torch.where(d != 0, d, torch.ones_like(d)) + 8
    assert torch.equal(codes, codes.round()) and bool(((codes >= 0) & (codes <= 15)).all())
    # searched scales err less than the absmax ones, group by group summed over the weight
    err = (deq - w).pow(2).sum()
    assert err <= (ops.dequantize_int4(*ops.quantize_int4(w, group=group), K) - w).pow(2).sum()


@pytest.mark.parametrize("group", GROUPS)
def test_dequantize_rows_and_reference(group):
    N, K = 40, 1000
    packed, scales = ops.search_quantize_int4(_w(N, K), group=group)
    full = ops.ref_dequantize_int4(packed, scales, K)
    assert torch.equal(ops.dequantize_int4(packed, scales, K), full)
    ids = torch.tensor([[3, 0], [39, 3]])
    assert torch.equal(ops.dequantize_rows_int4(packed, scales, K, ids), full[ids])
    unit = ops.int4_unit_scales(scales, K)  # one scale per 32 k: the same weight
    assert unit.shape == (N, ops.int4_groups(K))
    assert torch.equal(ops.ref_dequantize_int4(packed, unit, K), full)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("N, K", [s for s in SHAPES if s[0] % 8 == 0])
def test_rows8_layout_round_trips(group, N, K):
    packed, scales = ops.search_quantize_int4(_w(N, K), group=group)
    p8, s8 = ops.int4_to_rows8(packed, scales, K)
    assert p8.shape == packed.shape and s8.shape == scales.shape
    rp, rs = ops.ref_int4_from_rows8(p8, s8)
    assert torch.equal(rp, packed) and torch.equal(rs, scales)
    bp, bs = ops.int4_from_rows8(p8, s8, K)
    assert torch.equal(bp, packed) and torch.equal(bs, scales)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M", [1, 3, 8, 17, 40])
@pytest.mark.parametrize("group", GROUPS)
def test_matmul_matches_reference(isa, M, group):
    """Every ISA, both layouts, q8 and float activations, against the plain-torch reference (the same bound as
    the group-32 kernels' tests: float32 summation order)."""
    gen = torch.Generator().manual_seed(M + group)
    for i, (N, K) in enumerate(SHAPES):
        packed, scales = ops.search_quantize_int4(_w(N, K, seed=i), group=group)
        x = torch.randn(M, K, generator=gen) * (1 + 10 * torch.rand(M, K, generator=gen) ** 8)
        bias = torch.randn(N, generator=gen) if i % 2 == 0 else None
        w = ops.ref_dequantize_int4(packed, scales, K)
        layouts = [(packed, scales, False)] + ([(*ops.int4_to_rows8(packed, scales, K), True)] if N % 8 == 0 else [])
        for q8 in (True, False):
            want = ops.ref_matmul_int4(x, packed, scales, K, bias=bias, q8=q8)
            xs = ops.ref_dequantize_q8(x) if q8 else x
            bound = (xs.abs() @ w.abs().t()) * (K * 2.0 ** -23) + 1e-5
            for p, s, rows8 in layouts:
                with ops.use_isa(isa):
                    y = ops.matmul_int4(x, p, s, K, bias=bias, q8=q8, rows8=rows8)
                assert bool(((y - want).abs() <= bound).all()), (N, K, q8, rows8, (y - want).abs().max().item())


def test_bad_groups_and_scales_are_refused():
    w = _w(16, 128)
    for bad in (16, 48, 512, True, "64"):
        with pytest.raises(ValueError, match="group_size must be one of"):
            ops.quantize_int4(w, group=bad)
    packed, scales = ops.quantize_int4(w, group=64)
    with pytest.raises(ValueError, match="scales must be"):
        ops.matmul_int4(torch.randn(1, 128), packed, scales[:, :1].contiguous().repeat(1, 3), 128)


# ---- a model with group_size ----

@pytest.mark.parametrize("group", [64, 128])
def test_model_close_to_its_simulation_and_saves_exactly(float_ckpt, tmp_path, group):
    q = load(mpt_lite.MptForCausalLM, float_ckpt, bits=4, quant_type="int4", group_size=group)
    lin = q.transformer.blocks[0].attn.Wqkv
    assert lin.group_size == group and lin.weight_scales.shape[1] == -(-lin.cols // group)
    ids = torch.randint(0, q.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = q(ids).logits, simulate(q)(ids).logits
    cos = torch.nn.functional.cosine_similarity(got.flatten(1), want.flatten(1)).min()
    assert cos >= 0.999, cos
    q.save_pretrained(tmp_path)
    meta = _saved_meta(tmp_path)
    assert meta["version"] == 7 and meta["group_size"] == group
    back = load(mpt_lite.MptForCausalLM, tmp_path)
    assert back.transformer.blocks[0].attn.Wqkv.group_size == group
    with torch.no_grad():
        assert torch.equal(back(ids).logits, got)
    with pytest.raises(ValueError, match="group_size"):
        load(mpt_lite.MptForCausalLM, tmp_path, group_size=32)


def test_model_group_size_is_int4_only(float_ckpt):
    with pytest.raises(ValueError, match="quant_type 'int4' only"):
        load(mpt_lite.MptForCausalLM, float_ckpt, bits=4, quant_type="nf4", group_size=64)
    with pytest.raises(ValueError, match="group_size must be one of"):
        load(mpt_lite.MptForCausalLM, float_ckpt, bits=4, group_size=96)
    with pytest.raises(ValueError, match="group_size applies to int4"):
        load(mpt_lite.MptForCausalLM, float_ckpt, group_size=64)


def _grouped(model, group):
    model = copy.deepcopy(model)
    for b in model.transformer.blocks:
        for owner, name in ((b.attn, "Wqkv"), (b.attn, "out_proj"), (b.ffn, "up_proj"), (b.ffn, "down_proj")):
            setattr(owner, name, QuantLinear.from_linear(getattr(owner, name), quant_type="int4", group_size=group))
    return model


@pytest.mark.parametrize("group", [64, 128])
def test_native_step_equals_torch_path(group, float_activations):
    run_both(_grouped(tiny(), group), SCHEDULE)


def test_native_step_with_q8_activations():
    """As shipped (q8 activations up to Q8_MAX_ROWS rows): the tolerance of test_native_step's q8 test."""
    run_both(_grouped(tiny(), 64), SCHEDULE, rel=1e-2)


def test_engine_greedy_tokens_identical_with_an_int4_embedding(float_ckpt, tmp_path):
    """Block Linears at group 64 and the tied embedding at int4 (embedding_bits=4), which keeps groups of 32 (its
    row-layout logits kernels read those as they are): the native step's greedy tokens equal the torch path's, and
    a file saved so reloads the same groups."""
    model = load(mpt_lite.MptForCausalLM, float_ckpt, bits=4, embedding_bits=4, group_size=64)
    wte, lin = model.transformer.wte, model.transformer.blocks[0].ffn.down_proj
    assert (wte.quant_type, wte.group_size, lin.group_size) == ("int4", 32, 64)
    assert_engine_greedy_tokens_identical(model)
    model.save_pretrained(tmp_path)
    back = load(mpt_lite.MptForCausalLM, tmp_path)
    assert (back.transformer.wte.group_size, back.transformer.blocks[0].ffn.down_proj.group_size) == (32, 64)


def test_grouped_int4_embedding_lookups_in_the_native_step():
    """A tied int4 embedding built with group 64 directly (load() keeps 32): the native step's lookups and logits
    read it too."""
    from mpt_lite.quant import QuantEmbedding

    model = _grouped(tiny(), 64)
    wte = model.transformer.wte
    q = QuantEmbedding(wte.num_embeddings, wte.embedding_dim, "int4", group_size=64)
    q.quantize_from(wte.weight.detach())
    model.transformer.wte = q
    assert_engine_greedy_tokens_identical(model)


def test_groups_of_32_still_save_as_version_6(float_ckpt, tmp_path):
    q = load(mpt_lite.MptForCausalLM, float_ckpt, bits=4, quant_type="int4")
    q.save_pretrained(tmp_path)
    assert _saved_meta(tmp_path)["version"] == 6  # readable by the mpt_lite before group_size


def test_cli_group_size_needs_int4():
    from mpt_lite.cli import CliError, load_model

    with pytest.raises(CliError, match="--group-size needs --bits 4 with int4"):
        load_model(None, 4, "nf4", group_size=64)
    with pytest.raises(CliError, match="--group-size needs --bits 4 with int4"):
        load_model(None, 8, None, group_size=64)


def test_wider_groups_are_held_in_rows8_wherever_a_rows8_kernel_runs(monkeypatch):
    """The row layout's x86 kernels take groups of 32 only (wider ones would be widened every call), so int4 with
    group_size above 32 is held in rows8 on every AVX2 / AVX-512 CPU, AMX ones included; the portable build reads
    the row layout's wider groups itself."""
    for isa in ISAS:
        with ops.use_isa(isa):
            assert ops.rows8_preferred(64, "int4", 2048, group_size=64) is (isa != "generic"), isa
            assert not ops.rows8_preferred(60, "int4", 2048, group_size=64)
    monkeypatch.setenv("MPT_LITE_ROWS8", "0")
    assert not ops.rows8_preferred(64, "int4", 2048, group_size=64)
