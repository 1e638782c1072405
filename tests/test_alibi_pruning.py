"""Attention skips the int8 / 4-bit cache blocks that ALiBi makes negligible
(csrc/cpu/alibi_pruning.h): the output must stay the reference's (ops.ref_paged_attention_decode,
plain torch over every key), the skipping must actually happen where the bound allows it, and a far
key that does matter must never be skipped."""
import os
import subprocess
import sys

import pytest
import torch

from mpt_lite import ops
from mpt_lite.model.layers import alibi_slopes
from test_attention_kernels import Q4, fill

ISAS = ops.supported_isas()
QUANTIZED = [torch.int8, Q4]
TOL = dict(atol=2e-5, rtol=2e-5)


@pytest.fixture(autouse=True)
def pruning_on():
    with ops.use_alibi_pruning(True):
        ops.alibi_pruning_stats(reset=True)
        yield


def decode(isa, q, cache, tables, ctx, scale, slopes, threads=2, split=0):
    with ops.use_isa(isa):
        return ops.paged_attention_decode(q, *cache[:2], tables, ctx, scale, slopes, *cache[2:], num_threads=threads,
                                          split_tokens=split)


def reference(q, cache, tables, ctx, scale, slopes):
    return ops.ref_paged_attention_decode(q, cache[0], cache[1], tables, ctx, scale, slopes, *cache[2:])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", QUANTIZED)
@pytest.mark.parametrize("heads,kv_heads", [(16, 16), (8, 4), (8, 2)])  # 1, 2 and 4 query heads a kv head
@pytest.mark.parametrize("split", [0, 48])
def test_long_contexts_skip_blocks_and_match_the_reference(isa, dtype, heads, kv_heads, split):
    lens = [1500, 333, 17]
    cache, tables = fill(lens, kv_heads, 64, dtype, seed=5)
    g = torch.Generator().manual_seed(6)
    q = torch.randn(len(lens), heads, 64, generator=g)
    ctx = torch.tensor(lens, dtype=torch.int32)
    slopes = alibi_slopes(heads)
    for threads in (1, 2):
        got = decode(isa, q, cache, tables, ctx, 0.125, slopes, threads, split)
        torch.testing.assert_close(got, reference(q, cache, tables, ctx, 0.125, slopes), **TOL)
    skipped, seen = ops.alibi_pruning_stats(reset=True)
    assert seen > 0
    # The steepest heads (slopes 2^-1 ... 2^-4) drop most of a 1,500-token context; with 4 query heads a kv
    # head the AVX-512 tile kernel computes a head's rows together, so only blocks all four skip count.
    assert skipped / seen > (0.02 if heads // kv_heads >= 4 and isa == "avx512" else 0.15)
    with ops.use_alibi_pruning(False):
        full = decode(isa, q, cache, tables, ctx, 0.125, slopes)
    assert ops.alibi_pruning_stats() == (0, 0)
    torch.testing.assert_close(got, full, atol=1e-6, rtol=1e-6)


def far_key_context(dtype, heads=4, D=64):
    """A 1,000-token context whose key 40 is the query's direction at 100x the usual size (value 7.0);
    returns the empty cache, its tables, the query and the K, V and slots to write."""
    cache, tables = fill([1000], heads, D, dtype, seed=8)
    g = torch.Generator().manual_seed(9)
    q = torch.randn(1, heads, D, generator=g)
    k = torch.randn(1000, heads, D, generator=g)
    v = torch.randn(1000, heads, D, generator=g)
    k[40] = q[0] / q[0].norm(dim=-1, keepdim=True) * 400.0
    v[40] = 7.0
    slots = tables[0, torch.arange(1000) // 16].long() * 16 + torch.arange(1000) % 16
    return cache, tables, q, k, v, slots


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", QUANTIZED)
def test_a_far_key_that_dominates_is_never_skipped(isa, dtype):
    """Key 40 of a 1,000-token context is the query's direction at 100x the usual size: despite ALiBi's
    penalty at distance 959 (about 60-480 here), its score wins, and the output is its value."""
    heads, D = 4, 64
    cache, tables, q, k, v, slots = far_key_context(dtype, heads, D)
    ops.ref_write_kv_cache(k, v, *cache[:2], slots, *cache[2:])
    ctx = torch.tensor([1000], dtype=torch.int32)
    slopes = alibi_slopes(heads)
    scale = 1.0
    want = reference(q, cache, tables, ctx, scale, slopes)
    got = decode(isa, q, cache, tables, ctx, scale, slopes)
    torch.testing.assert_close(got, want, **TOL)
    dominated = (want - 7.0).abs().amax(-1) < 0.5
    assert dominated.any()  # the test's premise: somewhere the far key decides the output
    # The same query as the last row of a prefill chunk of 5, the other rows from the same direction.
    qp = q[0].expand(5, heads, D).contiguous()
    qsl = torch.tensor([0, 5], dtype=torch.int32)
    with ops.use_isa(isa):
        got = ops.paged_attention_prefill(qp, *cache[:2], tables, ctx, qsl, scale, slopes, *cache[2:])
    want = ops.ref_paged_attention_prefill(qp, cache[0], cache[1], tables, ctx, qsl, scale, slopes, *cache[2:])
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", QUANTIZED)
@pytest.mark.parametrize("heads,kv_heads", [(8, 8), (8, 2)])
def test_long_prompts_skip_blocks_in_prefill(isa, dtype, heads, kv_heads):
    """Prefill over a cached prefix: each query row skips what is negligible for it (a tile of rows only
    the blocks negligible for all of them)."""
    shapes = [(1300, 700), (400, 37), (90, 90)]  # (context, new tokens)
    cache, tables = fill([c for c, _ in shapes], kv_heads, 64, dtype, seed=12)
    qsl = torch.tensor([0] + [n for _, n in shapes], dtype=torch.int32).cumsum(0).to(torch.int32)
    q = torch.randn(int(qsl[-1]), heads, 64, generator=torch.Generator().manual_seed(13))
    ctx = torch.tensor([c for c, _ in shapes], dtype=torch.int32)
    slopes = alibi_slopes(heads)
    with ops.use_isa(isa):
        got = ops.paged_attention_prefill(q, *cache[:2], tables, ctx, qsl, 0.125, slopes, *cache[2:])
    want = ops.ref_paged_attention_prefill(q, cache[0], cache[1], tables, ctx, qsl, 0.125, slopes, *cache[2:])
    torch.testing.assert_close(got, want, **TOL)
    skipped, seen = ops.alibi_pruning_stats()
    # 4 query heads of different slopes a kv head on AVX-512: a block goes when all four may skip it
    assert seen > 0 and skipped / seen > (0.03 if heads // kv_heads >= 4 and isa == "avx512" else 0.1)


FLOATS = [torch.float32, torch.bfloat16, torch.float16]


def torch_bound(k_cache):
    """Each cached key row's largest |value| as stored, by torch: the oracle for k_bound."""
    return k_cache.float().abs().amax(-1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_write_kv_cache_keeps_float_key_bounds(isa, dtype):
    g = torch.Generator().manual_seed(2)
    k = torch.randn(40, 3, 64, generator=g) * 5
    k[7, 1, 5] = 70000.0  # beyond float16's range: its row's bound must be inf there
    k[8, 2, 9] = float("nan")  # a NaN row: its bound is NaN (never skipped)
    v = torch.randn(40, 3, 64, generator=g)
    kc, vc = torch.zeros(4, 16, 3, 64, dtype=dtype), torch.zeros(4, 16, 3, 64, dtype=dtype)
    bound = torch.full((4, 16, 3), -1.0)
    slots = torch.randperm(64, generator=g)[:40]
    with ops.use_isa(isa):
        ops.write_kv_cache(k, v, kc, vc, slots, k_bound=bound)
    got = bound.view(-1, 3)[slots]
    stored = torch_bound(kc).view(-1, 3)[slots]
    assert torch.isnan(got[8, 2]) and torch.isnan(stored[8, 2])
    if dtype == torch.float16:
        assert torch.isinf(got[7, 1]) and torch.isinf(stored[7, 1])
    ok = torch.isfinite(stored)
    assert (got[ok] >= stored[ok]).all()  # covers the values as stored
    assert (got[ok] <= k.abs().amax(-1)[ok] * (1 + 1 / 64)).all()  # and stays tight
    if dtype == torch.float32:
        assert torch.equal(got[ok], stored[ok])
    untouched = torch.ones(64, dtype=torch.bool)
    untouched[slots] = False
    assert (bound.view(-1, 3)[untouched] == -1).all()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("threads", [1, 2])
def test_float_caches_with_bounds_skip_and_match_the_reference(isa, dtype, threads):
    lens = [1500, 200]
    cache, tables = fill(lens, 8, 64, dtype, seed=5)
    bound = torch_bound(cache[0])
    q = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(6))
    ctx = torch.tensor(lens, dtype=torch.int32)
    slopes = alibi_slopes(8)
    with ops.use_isa(isa):
        got = ops.paged_attention_decode(q, *cache[:2], tables, ctx, 0.125, slopes, num_threads=threads,
                                         k_bound=bound)
    torch.testing.assert_close(got, reference(q, cache, tables, ctx, 0.125, slopes), **TOL)
    skipped, seen = ops.alibi_pruning_stats(reset=True)
    assert skipped / seen > 0.15
    qsl = torch.tensor([0, 300, 300 + 50], dtype=torch.int32)  # prefill: the last 300 and 50 tokens
    qp = torch.randn(350, 8, 64, generator=torch.Generator().manual_seed(7))
    with ops.use_isa(isa):
        got = ops.paged_attention_prefill(qp, *cache[:2], tables, ctx, qsl, 0.125, slopes, num_threads=threads,
                                          k_bound=bound)
    want = ops.ref_paged_attention_prefill(qp, cache[0], cache[1], tables, ctx, qsl, 0.125, slopes)
    torch.testing.assert_close(got, want, **TOL)
    assert ops.alibi_pruning_stats()[0] > 0


@pytest.mark.parametrize("isa", ISAS)
def test_float_cache_far_key_that_dominates_is_never_skipped(isa):
    heads = 4
    cache, tables, q, k, v, slots = far_key_context(torch.float32, heads)
    bound = torch.zeros(cache[0].shape[:3])
    with ops.use_isa(isa):
        ops.write_kv_cache(k, v, *cache[:2], slots, k_bound=bound)
        got = ops.paged_attention_decode(q, *cache[:2], tables, torch.tensor([1000], dtype=torch.int32), 1.0,
                                         alibi_slopes(heads), k_bound=bound)
    want = reference(q, cache, tables, torch.tensor([1000], dtype=torch.int32), 1.0, alibi_slopes(heads))
    torch.testing.assert_close(got, want, **TOL)
    assert ((want - 7.0).abs().amax(-1) < 0.5).any()


def test_k_bound_is_checked():
    kc = torch.zeros(4, 16, 2, 64)
    q = torch.randn(1, 2, 64)
    tables, ctx = torch.zeros(1, 1, dtype=torch.int32), torch.tensor([3], dtype=torch.int32)
    with pytest.raises(ValueError, match="k_bound must have shape"):
        ops.paged_attention_decode(q, kc, kc.clone(), tables, ctx, 1.0, k_bound=torch.zeros(4, 16, 3))
    with pytest.raises(TypeError, match="k_bound"):
        ops.paged_attention_decode(q, kc, kc.clone(), tables, ctx, 1.0, k_bound=torch.zeros(4, 16, 2, dtype=torch.int32))
    k8, v8 = torch.zeros(4, 16, 2, 64, dtype=torch.int8), torch.zeros(4, 16, 2, 64, dtype=torch.int8)
    sc = torch.zeros(4, 16, 2)
    with pytest.raises(ValueError, match="float KV caches only"):
        ops.paged_attention_decode(q, k8, v8, tables, ctx, 1.0, None, sc, sc.clone(), k_bound=torch.zeros(4, 16, 2))


def test_engine_float_cache_keeps_bounds_and_tokens():
    """The engine's float32 cache keeps bounds (so its decode skips), and greedy tokens match pruning off."""
    from mpt_lite import Engine, load

    model = load(bits=4)
    prompt = torch.arange(2, 700) % 3000 + 5
    outs = {}
    for on in (True, False):
        with ops.use_alibi_pruning(on):
            eng = Engine(model, prefix_caching=False)
            assert eng.cache.k_bound[0] is not None and eng.cache.k_bound[0].dtype == torch.float32
            req = eng.add_request(prompt, 24, eos_token_id=[])
            ops.alibi_pruning_stats(reset=True)
            while not req.finished:
                eng.step()
            outs[on] = (list(req.output), ops.alibi_pruning_stats(reset=True))
    assert outs[True][0] == outs[False][0]
    assert outs[True][1][0] > 0 and outs[False][1] == (0, 0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_float_caches_without_bounds_are_never_pruned(isa, dtype):
    cache, tables = fill([1200], 4, 64, dtype, seed=3)
    q = torch.randn(1, 4, 64)
    ctx = torch.tensor([1200], dtype=torch.int32)
    got = decode(isa, q, cache, tables, ctx, 0.125, alibi_slopes(4))
    torch.testing.assert_close(got, reference(q, cache, tables, ctx, 0.125, alibi_slopes(4)), **TOL)
    assert ops.alibi_pruning_stats() == (0, 0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", QUANTIZED)
def test_no_alibi_no_pruning(isa, dtype):
    """Without slopes (or with non-positive ones) every key counts: nothing is skipped."""
    cache, tables = fill([900], 2, 64, dtype, seed=4)
    q = torch.randn(1, 2, 64)
    ctx = torch.tensor([900], dtype=torch.int32)
    for slopes in (None, torch.tensor([0.0, -0.5])):
        got = decode(isa, q, cache, tables, ctx, 0.125, slopes)
        torch.testing.assert_close(got, reference(q, cache, tables, ctx, 0.125, slopes), **TOL)
        assert ops.alibi_pruning_stats(reset=True)[0] == 0


@pytest.mark.parametrize("dtype", QUANTIZED)
@pytest.mark.parametrize("threads", [1, 2])
def test_a_nan_key_scale_is_never_skipped(dtype, threads):
    """A NaN in a far block's key scales makes every head's output NaN, as in the reference: its bound is
    NaN (never skipped), and a split context's part that meets it first is not taken for empty."""
    cache, tables = fill([1500], 4, 64, dtype, seed=3)
    cache[2][int(tables[0, 2]), 3] = float("nan")
    q = torch.randn(1, 4, 64, generator=torch.Generator().manual_seed(0))
    ctx = torch.tensor([1500], dtype=torch.int32)
    want = reference(q, cache, tables, ctx, 0.125, alibi_slopes(4))
    assert torch.isnan(want).all()
    for isa in ISAS:
        got = decode(isa, q, cache, tables, ctx, 0.125, alibi_slopes(4), threads)
        assert torch.isnan(got).all(), isa


@pytest.mark.parametrize("dtype", QUANTIZED)
def test_an_all_zero_query_or_huge_scores_stay_finite(dtype):
    """A zero query row (every score its ALiBi bias) and scores near the float range: the plan's
    bounds must not turn into inf - inf or skip the own block."""
    cache, tables = fill([700], 2, 64, dtype, seed=2)
    q = torch.randn(1, 2, 64)
    q[0, 0] = 0.0
    q[0, 1] *= 1e6
    ctx = torch.tensor([700], dtype=torch.int32)
    slopes = torch.tensor([0.5, 0.25])
    for isa in ISAS:
        got = decode(isa, q, cache, tables, ctx, 0.125, slopes)
        want = reference(q, cache, tables, ctx, 0.125, slopes)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, **TOL)


def test_switch_context_manager_and_environment():
    assert ops.alibi_pruning()
    with ops.use_alibi_pruning(False):
        assert not ops.alibi_pruning()
        with ops.use_alibi_pruning(True):
            assert ops.alibi_pruning()
        assert not ops.alibi_pruning()
    assert ops.alibi_pruning()
    code = "from mpt_lite import ops; print(ops.alibi_pruning())"
    env = dict(os.environ, MPT_LITE_ALIBI_PRUNE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
