"""The rows8 layouts of int4, nf4 and int8 (8 rows interleaved per group of 32 k, csrc/cpu/quant_formats.h): the
conversion against the layout's definition and the plain-torch reference, its matmuls (the AVX2 rows8 kernel
below 32 rows, the panels from 32, the AVX-512 rows8 kernel, the row-layout kernels on a scratch copy elsewhere)
against the reference on every ISA, and a QuantLinear holding it: the row layout in codes() / state_dict() /
saved files of other machines, a saved rows8 file mapped as it is, the native step."""
import os

import pytest
import torch

from test_mapped_load import _mapped_ranges

import mpt_lite
from mpt_lite import ops
from mpt_lite.quant import QuantEmbedding, QuantLinear
from mpt_lite.quant.layers import quantized_modules

ISAS = ops.supported_isas()
SHAPES = [(8, 32), (24, 64), (40, 1000), (136, 2080), (64, 97), (16, 7000)]  # (N, K): partial groups and layout tiles, one group, many


def _q(N, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ops.quantize_int4(torch.randn(N, K, generator=g) * 0.05)


def _unit(n8, g, S, G):
    """quant_formats.h: 8-row set n8 = 4t + p of S, at group g of G, is unit 4t*G + g*ng + p (ng = min(4, S - 4t))."""
    t, p = divmod(n8, 4)
    return 4 * t * G + g * min(4, S - 4 * t) + p


@pytest.mark.parametrize("N, K", SHAPES)
def test_layout_is_the_documented_interleave(N, K):
    packed, scales = _q(N, K)
    p8, s8 = ops.int4_to_rows8(packed, scales, K)
    assert p8.shape == packed.shape and s8.shape == scales.shape and p8.dtype == packed.dtype
    G = scales.shape[1]
    flat, sflat = p8.reshape(-1), s8.reshape(-1)
    g = torch.Generator().manual_seed(N + K)
    for _ in range(200):  # byte (u(n8, g) * 128 + q * 32 + r * 4 + j) = packed[n8*8 + r][g*16 + 4q + j]
        n8, grp, q, r, j = (int(torch.randint(0, m, (1,), generator=g)) for m in (N // 8, G, 4, 8, 4))
        u = _unit(n8, grp, N // 8, G)
        assert flat[u * 128 + q * 32 + r * 4 + j] == packed[n8 * 8 + r, grp * 16 + 4 * q + j]
        assert sflat[u * 8 + r] == scales[n8 * 8 + r, grp]
    rp, rs = ops.ref_int4_from_rows8(p8, s8)
    assert torch.equal(rp, packed) and torch.equal(rs, scales)
    bp, bs = ops.int4_from_rows8(p8, s8, K)
    assert torch.equal(bp, packed) and torch.equal(bs, scales)


NF4_SHAPES = [(8, 64, 64), (24, 128, 64), (40, 1024, 64), (136, 2112, 32), (16, 4096, 1024)]  # (N, K, blocksize), nf4_q8_ok


def _nf4(N, K, bs, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ops.quantize_nf4(torch.randn(N, K, generator=g) * 0.05, blocksize=bs)


@pytest.mark.parametrize("N, K, bs", NF4_SHAPES)
def test_nf4_layout_is_the_documented_interleave(N, K, bs):
    packed, absmax = _nf4(N, K, bs)
    p8, a8 = ops.nf4_to_rows8(packed, absmax, (N, K), bs)
    assert p8.shape == packed.shape and a8.shape == absmax.shape
    G, C = K // 32, K // bs

    def code(n, k):  # bitsandbytes: element f = n*K + k in byte f/2, the high nibble when f is even
        f = n * K + k
        return int(packed[f // 2]) >> 4 if f % 2 == 0 else int(packed[f // 2]) & 15

    g = torch.Generator().manual_seed(N + K)
    for _ in range(200):
        n8, grp, q, r, j = (int(torch.randint(0, m, (1,), generator=g)) for m in (N // 8, G, 4, 8, 4))
        byte = int(p8[_unit(n8, grp, N // 8, G) * 128 + q * 32 + r * 4 + j])
        assert byte & 15 == code(n8 * 8 + r, grp * 32 + 4 * q + j)
        assert byte >> 4 == code(n8 * 8 + r, grp * 32 + 16 + 4 * q + j)
        c = int(torch.randint(0, C, (1,), generator=g))
        assert a8[_unit(n8, c, N // 8, C) * 8 + r] == absmax[(n8 * 8 + r) * C + c]
    rp, ra = ops.ref_nf4_from_rows8(p8, a8, (N, K), bs)
    assert torch.equal(rp, packed) and torch.equal(ra, absmax)
    bp, ba = ops.nf4_from_rows8(p8, a8, (N, K), bs)
    assert torch.equal(bp, packed) and torch.equal(ba, absmax)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M", [1, 2, 3, 4, 8, 17, 32, 40])
def test_nf4_matmul_matches_reference(isa, M):
    gen = torch.Generator().manual_seed(M)
    for i, (N, K, bs) in enumerate(NF4_SHAPES):
        packed, absmax = _nf4(N, K, bs, seed=i)
        p8, a8 = ops.nf4_to_rows8(packed, absmax, (N, K), bs)
        x = torch.randn(M, K, generator=gen) * (1 + 10 * torch.rand(M, K, generator=gen) ** 8)
        bias = torch.randn(N, generator=gen) if i % 2 == 0 else None
        with ops.use_isa(isa):
            y = ops.matmul_nf4(x, p8, a8, (N, K), bs, bias=bias, q8=True, rows8=True)
            y_float = ops.matmul_nf4(x, p8, a8, (N, K), bs, bias=bias, q8=False, rows8=True)
            want_float = ops.matmul_nf4(x, packed, absmax, (N, K), bs, bias=bias, q8=False)
        want = ops.ref_matmul_nf4(x, packed, absmax, (N, K), blocksize=bs, bias=bias, q8=True)
        w = ops.ref_dequantize_nf4_int8(packed, absmax, (N, K), bs)
        bound = (ops.ref_dequantize_q8(x).abs() @ w.abs().t()) * (K * 2.0 ** -23) + 1e-6
        assert bool(((y - want).abs() <= bound).all()), (N, K, (y - want).abs().max().item())
        assert torch.equal(y_float, want_float)


INT8_SHAPES = [(8, 32), (24, 64), (40, 1024), (136, 2080), (16, 4096)]  # (N, K): K a multiple of 32


def _int8(N, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ops.quantize_int8(torch.randn(N, K, generator=g) * 0.05)


@pytest.mark.parametrize("N, K", INT8_SHAPES)
def test_int8_layout_is_the_documented_interleave(N, K):
    cb, scb = _int8(N, K)
    c8 = ops.int8_to_rows8(cb, scb)
    assert c8.shape == cb.shape and c8.dtype == torch.int8
    flat, G = c8.reshape(-1), K // 32
    g = torch.Generator().manual_seed(N + K)
    for _ in range(200):  # byte (u(n8, g) * 256 + q * 32 + r * 4 + j) = cb[n8*8 + r][g*32 + 4q + j]
        n8, grp, q, r, j = (int(torch.randint(0, m, (1,), generator=g)) for m in (N // 8, G, 8, 8, 4))
        assert flat[_unit(n8, grp, N // 8, G) * 256 + q * 32 + r * 4 + j] == cb[n8 * 8 + r, grp * 32 + 4 * q + j]
    assert torch.equal(ops.ref_int8_from_rows8(c8), cb)
    assert torch.equal(ops.int8_from_rows8(c8, scb), cb)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 8, 9, 16, 17, 31, 32, 33, 100])
def test_int8_matmul_matches_reference(isa, M):
    """The AVX-512 rows8 kernel (every row count; one x row: a whole layout tile a pass) and, elsewhere, the
    row-layout kernels on a scratch copy, against the plain-torch q8 reference."""
    gen = torch.Generator().manual_seed(M)
    for i, (N, K) in enumerate(INT8_SHAPES):
        cb, scb = _int8(N, K, seed=i)
        c8 = ops.int8_to_rows8(cb, scb)
        x = torch.randn(M, K, generator=gen) * (1 + 10 * torch.rand(M, K, generator=gen) ** 8)
        bias = torch.randn(N, generator=gen) if i % 2 == 0 else None
        with ops.use_isa(isa):
            y = ops.matmul_int8(x, c8, scb, bias=bias, q8=True, rows8=True)
            y_float = ops.matmul_int8(x, c8, scb, bias=bias, q8=False, rows8=True)
            want_float = ops.matmul_int8(x, cb, scb, bias=bias, q8=False)
        want = ops.ref_matmul_int8(x, cb, scb, bias=bias, q8=True)
        w = ops.ref_dequantize_int8(cb, scb)
        bound = (ops.ref_dequantize_q8(x).abs() @ w.abs().t()) * (K * 2.0 ** -23) + 1e-6
        assert bool(((y - want).abs() <= bound).all()), (N, K, (y - want).abs().max().item())
        assert torch.equal(y_float, want_float)


@pytest.mark.skipif("avx512" not in ISAS, reason="the int8 rows8 kernel is AVX-512 VNNI (elsewhere the row-layout "
                    "kernels run on a copy, and they choose by the row count)")
def test_int8_rows8_rows_do_not_depend_on_row_count_or_threads():
    """One x row, pairs of sets, 1-8 x rows a pass: each output sums its block dots in the same order."""
    N, K, M = 136, 2080, 21
    cb, scb = _int8(N, K)
    c8 = ops.int8_to_rows8(cb, scb)
    x = torch.randn(M, K)
    with ops.use_isa("avx512"):
        full = ops.matmul_int8(x, c8, scb, q8=True, rows8=True)
        for m0, m1 in ((0, 1), (1, 3), (3, 6), (6, 10), (3, 12), (2, M)):
            assert torch.equal(ops.matmul_int8(x[m0:m1], c8, scb, q8=True, rows8=True), full[m0:m1])
        for threads in (1, 2, 3):
            assert torch.equal(ops.matmul_int8(x, c8, scb, q8=True, rows8=True, num_threads=threads), full)


@pytest.mark.skipif("avx512" not in ISAS, reason="the x-row passes are the AVX-512 rows8 kernel's (AVX2 takes "
                    "its panels from 16-32 rows)")
@pytest.mark.parametrize("quant_type", ["int4", "nf4", "int8"])
@pytest.mark.parametrize("M", [17, 21])
def test_rows8_prompt_in_several_l2_passes(quant_type, M):
    """At K = 65536 a pass over the weights takes 8 x rows on any L2 up to 2 MiB (a quarter of L2 of x codes), so
    21 rows make passes of 8, 8 and 5, and 17 rows 8, 8 and 1 (one row alone in a pass); 40 outputs are a whole
    layout tile (both pairs a pass) and a tail tile of one set (pair by pair): each row equals that row computed
    alone and the q8 reference."""
    N, K = 40, 65536
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1))
    if quant_type == "int4":
        packed, scales = _q(N, K)
        p8, s8 = ops.int4_to_rows8(packed, scales, K)
        run = lambda v: ops.matmul_int4(v, p8, s8, K, q8=True, rows8=True)
        want, w = ops.ref_matmul_int4(x, packed, scales, K, q8=True), ops.ref_dequantize_int4(packed, scales, K)
    elif quant_type == "nf4":
        packed, absmax = _nf4(N, K, 64)
        p8, a8 = ops.nf4_to_rows8(packed, absmax, (N, K), 64)
        run = lambda v: ops.matmul_nf4(v, p8, a8, (N, K), 64, q8=True, rows8=True)
        want = ops.ref_matmul_nf4(x, packed, absmax, (N, K), blocksize=64, q8=True)
        w = ops.ref_dequantize_nf4_int8(packed, absmax, (N, K), 64)
    else:
        cb, scb = _int8(N, K)
        c8 = ops.int8_to_rows8(cb, scb)
        run = lambda v: ops.matmul_int8(v, c8, scb, q8=True, rows8=True)
        want, w = ops.ref_matmul_int8(x, cb, scb, q8=True), ops.ref_dequantize_int8(cb, scb)
    with ops.use_isa("avx512"):
        full = run(x)
        for m in sorted({0, 7, 8, 15, 16, M - 1}):
            assert torch.equal(run(x[m:m + 1]), full[m:m + 1]), m
    bound = (ops.ref_dequantize_q8(x).abs() @ w.abs().t()) * (K * 2.0 ** -23) + 1e-6
    assert bool(((full - want).abs() <= bound).all()), (full - want).abs().max().item()


def test_rows8_needs_a_multiple_of_8_rows():
    packed, absmax = _nf4(8, 96, 64)  # 96 k: blocks of 64 straddle the q8 blocks (not nf4_q8_ok)
    with pytest.raises(ValueError, match="blocksize"):
        ops.nf4_to_rows8(packed, absmax, (8, 96), 64)
    packed, scales = _q(12, 64)
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.int4_to_rows8(packed, scales, 64)
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.matmul_int4(torch.randn(1, 64), packed, scales, 64, rows8=True)
    cb, scb = _int8(8, 96 + 8)
    with pytest.raises(ValueError, match="multiple of 32"):
        ops.int8_to_rows8(cb, scb)
    with pytest.raises(ValueError, match="multiple of 32"):
        ops.matmul_int8(torch.randn(1, 104), cb, scb, rows8=True)
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.int8_to_rows8(*_int8(12, 64))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 8, 16, 17, 31, 32, 33, 100])
def test_matmul_matches_reference(isa, M):
    gen = torch.Generator().manual_seed(M)
    for i, (N, K) in enumerate(SHAPES):
        packed, scales = _q(N, K, seed=i)
        p8, s8 = ops.int4_to_rows8(packed, scales, K)
        x = torch.randn(M, K, generator=gen) * (1 + 10 * torch.rand(M, K, generator=gen) ** 8)
        bias = torch.randn(N, generator=gen) if i % 2 == 0 else None
        with ops.use_isa(isa):
            y = ops.matmul_int4(x, p8, s8, K, bias=bias, q8=True, rows8=True)
            y_float = ops.matmul_int4(x, p8, s8, K, bias=bias, q8=False, rows8=True)
            want_float = ops.matmul_int4(x, packed, scales, K, bias=bias, q8=False)
        want = ops.ref_matmul_int4(x, packed, scales, K, bias=bias, q8=True)
        # float32 rounding of a K-term dot product of the dequantized operands
        w = ops.ref_dequantize_int4(packed, scales, K)
        bound = (ops.ref_dequantize_q8(x).abs() @ w.abs().t()) * (K * 2.0 ** -23) + 1e-6
        assert bool(((y - want).abs() <= bound).all()), (N, K, (y - want).abs().max().item())
        assert torch.equal(y_float, want_float)  # float activations: the row-layout kernel on a scratch copy


@pytest.mark.skipif(not {"avx2", "avx512"} <= set(ISAS), reason="needs a CPU with both the AVX2 and AVX-512 variants")
@pytest.mark.parametrize("quant_type", ["int4", "nf4"])
def test_avx512_and_avx2_rows8_kernels_give_the_same_floats(quant_type):
    """Both sum each block's exact integer dot and apply scale x d in block order (the AVX-512 VNNI kernel's
    two half-lanes add in int32 first), so their outputs are equal bit for bit at every row count."""
    N, K = 136, 2112
    if quant_type == "int4":
        p8, s8 = ops.int4_to_rows8(*_q(N, K), K)
        run = lambda x: ops.matmul_int4(x, p8, s8, K, q8=True, rows8=True)
    else:
        p8, a8 = ops.nf4_to_rows8(*_nf4(N, K, 64), (N, K), 64)
        run = lambda x: ops.matmul_nf4(x, p8, a8, (N, K), blocksize=64, q8=True, rows8=True)
    for M in (1, 2, 5, 8, 31):  # below 32 rows: the AVX2 side is its rows8 tile, not the panels
        x = torch.randn(M, K)
        with ops.use_isa("avx2"):
            a = run(x)
        with ops.use_isa("avx512"):
            b = run(x)
        assert torch.equal(a, b), (M, (a - b).abs().max().item())


@pytest.mark.parametrize("M", [7, 40])
def test_rows_do_not_depend_on_row_count_or_threads(M):
    N, K = 136, 2080
    packed, scales = _q(N, K)
    p8, s8 = ops.int4_to_rows8(packed, scales, K)
    x = torch.randn(M, K)
    full = ops.matmul_int4(x, p8, s8, K, q8=True, rows8=True)
    for m0, m1 in ((0, 1), (1, 3), (3, 6), (2, 6), (2, M)):  # 1 row, 2-4 rows a whole tile a pass, more
        assert torch.equal(ops.matmul_int4(x[m0:m1], p8, s8, K, q8=True, rows8=True), full[m0:m1]) or m1 - m0 >= 32
    for threads in (1, 2, 3):
        assert torch.equal(ops.matmul_int4(x, p8, s8, K, q8=True, rows8=True, num_threads=threads), full)


def _linear(monkeypatch, switch, quant_type, N=64, K=256):
    monkeypatch.setenv("MPT_LITE_ROWS8", switch)
    torch.manual_seed(0)
    return QuantLinear.from_linear(torch.nn.Linear(K, N), quant_type=quant_type)


@pytest.mark.parametrize("quant_type", ["int4", "nf4", "int8"])
def test_quantlinear_holds_rows8_and_gives_the_saved_layout(monkeypatch, quant_type):
    rows = _linear(monkeypatch, "0", quant_type)
    held = _linear(monkeypatch, "1", quant_type)
    assert held.rows8 and not rows.rows8
    assert "layout='rows8'" in repr(held) and "rows8" not in repr(rows)
    assert not torch.equal(held.weight, rows.weight)  # the buffers hold the interleave...
    for name, t in rows.codes().items():  # ...codes() and state_dict() the row layout
        assert torch.equal(held.codes()[name], t) and torch.equal(held.state_dict()[name], t)
    x = torch.randn(3, 256)
    torch.testing.assert_close(held(x), rows(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(held.dequantized(), rows.dequantized(), rtol=0, atol=0)
    other = _linear(monkeypatch, "1", quant_type)
    with torch.no_grad():
        other.weight.zero_()
    other.load_state_dict(rows.state_dict())  # a row-layout state dict into a rows8 module
    assert other.rows8 and torch.equal(other.weight, held.weight)
    other._apply(lambda t: t.clone())  # .to() and friends: through the row layout and back
    assert other.rows8 and torch.equal(other.weight, held.weight)
    odd = QuantLinear(256, 12, quant_type=quant_type)
    odd.quantize_from(torch.randn(12, 256))
    emb = QuantEmbedding(64, 64, quant_type=quant_type)
    emb.quantize_from(torch.randn(64, 64))
    assert not odd.rows8  # 12 rows
    assert emb.rows8 == (quant_type == "int8")  # int4 / nf4 lookups read only the saved layout; int8's read rows8
    if emb.rows8:
        ids = torch.tensor([[0, 63, 7], [8, 9, 31]])
        row = QuantEmbedding(64, 64, quant_type=quant_type)
        row.load_codes(emb.codes())
        monkeypatch.setenv("MPT_LITE_ROWS8", "0")
        row.arrange_codes()
        assert not row.rows8
        assert torch.equal(emb(ids), row(ids))  # the same floats from either layout
        assert torch.equal(emb(ids), ops.ref_dequantize_int8(*emb.codes().values())[ids])
    if quant_type == "nf4":
        straddle = QuantLinear(96, 8, quant_type="nf4")  # blocks of 64 over 96 inputs: not nf4_q8_ok
        straddle.quantize_from(torch.randn(8, 96))
        assert not straddle.rows8
    if quant_type == "int8":
        ragged = QuantLinear(100, 8, quant_type="int8")  # 100 inputs: no whole groups of 32
        ragged.quantize_from(torch.randn(8, 100))
        assert not ragged.rows8


def test_int8_held_in_rows8_only_where_a_kernel_reads_it(monkeypatch):
    """AVX-512 without AMX-INT8 reads int8 rows8; AVX2 has no int8 rows8 kernel (int4 / nf4 it has). Below
    Q8_GEMM_MIN_K inputs many-row calls take float activations, which no rows8 kernel reads: int8 keeps the
    row layout there unless MPT_LITE_ROWS8=1."""
    monkeypatch.delenv("MPT_LITE_ROWS8", raising=False)
    for isa in ISAS:
        with ops.use_isa(isa):
            want = isa == "avx512" and not ops.amx_int8_enabled()
            assert ops.rows8_preferred(64, "int8") is want, isa
            assert ops.rows8_preferred(64, "int8", ops.Q8_GEMM_MIN_K) is want, isa
            assert not ops.rows8_preferred(64, "int8", ops.Q8_GEMM_MIN_K - 32)
            assert not ops.rows8_preferred(60, "int8", ops.Q8_GEMM_MIN_K)
            if isa == "avx2":
                assert ops.rows8_preferred(64, "int4") and ops.rows8_preferred(64, "nf4")
    monkeypatch.setenv("MPT_LITE_ROWS8", "1")
    assert ops.rows8_preferred(64, "int8", 256) and not ops.rows8_preferred(60, "int8", 256)
    monkeypatch.setenv("MPT_LITE_ROWS8", "0")
    assert not ops.rows8_preferred(64, "int8", 4096) and not ops.rows8_preferred(64, "int4")
    with pytest.raises(ValueError, match="quant_type"):
        ops.rows8_preferred(64, "int3")


@pytest.fixture(scope="module")
def float_folder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = mpt_lite.MptConfig(d_model=64, n_heads=4, n_layers=2, vocab_size=97, max_seq_len=32, expansion_ratio=4)
    src = tmp_path_factory.mktemp("float")
    mpt_lite.MptForCausalLM(cfg).eval().save_pretrained(src)
    return src


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc/self/maps")
@pytest.mark.parametrize("quant_type", ["int4", "nf4", "int8"])
def test_saved_rows8_maps_as_it_is_and_converts_elsewhere(monkeypatch, float_folder, tmp_path, quant_type):
    monkeypatch.setenv("MPT_LITE_ROWS8", "1")
    how = {"bits": 8} if quant_type == "int8" else {"bits": 4, "quant_type": quant_type}
    model = mpt_lite.MptForCausalLM.from_pretrained(float_folder, **how)
    linears = {n for n, m in quantized_modules(model).items() if isinstance(m, QuantLinear)}
    assert {n for n, m in quantized_modules(model).items() if m.rows8} == linears  # (wte: 97 rows)
    model.save_pretrained(tmp_path)
    ids = torch.tensor([[1, 5, 9, 33, 2]])
    same = mpt_lite.MptForCausalLM.from_pretrained(tmp_path)
    ranges = _mapped_ranges(tmp_path / "model.safetensors")
    for name, mod in quantized_modules(same).items():
        assert mod.rows8 == (name in linears)
        for piece, buf in mod.named_buffers(recurse=False):
            assert any(lo <= buf.data_ptr() < hi for lo, hi in ranges), f"{name}.{piece} was copied, not mapped"
    torch.testing.assert_close(same(ids).logits, model(ids).logits, rtol=0, atol=0)
    monkeypatch.setenv("MPT_LITE_ROWS8", "0")  # a machine that reads the row layout
    other = mpt_lite.MptForCausalLM.from_pretrained(tmp_path)
    assert not any(m.rows8 for m in quantized_modules(other).values())
    sa, sb = model.state_dict(), other.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.testing.assert_close(other(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


def test_int8_rows8_in_a_version_5_file_is_refused(monkeypatch, float_folder, tmp_path):
    """Format version 6 brought int8's rows8 layout: an older file that lists an int8 Linear as rows8 is
    corrupt, and loading it says so rather than reading the codes in the wrong order."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    monkeypatch.setenv("MPT_LITE_ROWS8", "1")
    mpt_lite.MptForCausalLM.from_pretrained(float_folder, bits=8).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["mpt_lite_quant"])
    assert info["version"] == 6 and info["rows8"]
    info["version"] = 5
    save_file(tensors, str(path), metadata={**meta, "mpt_lite_quant": json.dumps(info)})
    with pytest.raises(ValueError, match="version 5"):
        mpt_lite.MptForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("quant_type", ["int4", "nf4", "int8"])
def test_native_step_and_engine_with_rows8(monkeypatch, quant_type):
    """The native step reads rows8 weights as the torch path does (q8 activations as shipped: 1e-2, see
    test_native_step.py), and the engine's greedy tokens are the same with and without it."""
    from checkpoints import random_causal_lm
    from checkpoints import quantized
    from test_native_step import SCHEDULE, run_both

    from mpt_lite.runtime.engine import Engine

    monkeypatch.setenv("MPT_LITE_ROWS8", "1")
    model = quantized(random_causal_lm(0, vocab_size=104, max_seq_len=256), quant_type, "int8")
    assert all(b.attn.Wqkv.rows8 and b.ffn.down_proj.rows8 for b in model.transformer.blocks)
    assert model.transformer.wte.rows8  # 104 rows: the int8 embedding too (lookups and logits)
    run_both(model, SCHEDULE, rel=1e-2)
    outs = []
    for native in (True, False):
        engine = Engine(model, num_blocks=64, block_size=4, native_step=native, max_batch_tokens=24)
        assert engine.uses_native_step is native
        reqs = [engine.add_request(p, 12) for p in (list(range(5, 17)), [3, 9, 27], list(range(40, 80, 2)))]
        for _ in engine.run():
            pass
        outs.append([r.output for r in reqs])
    assert outs[0] == outs[1]
