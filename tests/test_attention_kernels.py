"""Paged KV cache write and attention kernels (every ISA variant, and CUDA where a GPU is
visible) against ops.ref_*."""
import pytest
import torch

from devices import device_of, needs_cuda, running, to, variants
from mpt_lite import ops
from mpt_lite.kernels.attention_ops import attention_exp
from mpt_lite.model.layers import alibi_slopes

ISAS = ops.supported_isas()
VARIANTS = variants(ISAS)
Q4 = torch.uint8  # the 4-bit cache: two codes a byte, a scale per 32 values (head_dim a multiple of 32)
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int8, Q4]


def with_dtypes(shapes, dtypes=DTYPES):
    """(dtype, *shape) for every dtype and shape (head_dim last) the dtype can hold."""
    return [(d, *sh) for d in dtypes for sh in shapes if d != Q4 or sh[-1] % 32 == 0]


def make_cache(num_blocks, block_size, kv_heads, head_dim, dtype):
    shape, scales = ops.cache_shapes(num_blocks, block_size, kv_heads, head_dim, dtype)
    k, v = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    if scales is None:
        return k, v, None, None
    return k, v, torch.zeros(scales), torch.zeros(scales)


def check_q4_refused_on_cuda():
    """4-bit caches have CPU kernels only: on a GPU every op refuses them by name."""
    k, v, ks, vs = to("cuda", *make_cache(2, 16, 2, 32, Q4))
    x = torch.randn(1, 2, 32, device="cuda")
    with pytest.raises(ValueError, match="CPU only"):
        ops.write_kv_cache(x, x, k, v, torch.tensor([0]), ks, vs)
    with pytest.raises(ValueError, match="CPU only"):
        ops.paged_attention_decode(torch.randn(1, 2, 32, device="cuda"), k, v, torch.zeros(1, 1, dtype=torch.int32),
                                   torch.tensor([1], dtype=torch.int32), 1.0, None, ks, vs)


def fill(seq_lens, kv_heads, head_dim, dtype, block_size=16, seed=0):
    """A cache holding len tokens per sequence in shuffled blocks; returns cache and block tables."""
    g = torch.Generator().manual_seed(seed)
    per = [(n + block_size - 1) // block_size for n in seq_lens]
    num_blocks = sum(per) + 3
    cache = make_cache(num_blocks, block_size, kv_heads, head_dim, dtype)
    order = torch.randperm(num_blocks, generator=g).to(torch.int32)
    tables = torch.zeros((len(seq_lens), max(per)), dtype=torch.int32)
    slots, at = [], 0
    for s, n in enumerate(seq_lens):
        tables[s, : per[s]] = order[at: at + per[s]]
        at += per[s]
        pos = torch.arange(n)
        slots.append(tables[s, pos // block_size].long() * block_size + pos % block_size)
    slots = torch.cat(slots)
    k = torch.randn(len(slots), kv_heads, head_dim, generator=g)
    v = torch.randn(len(slots), kv_heads, head_dim, generator=g)
    ops.ref_write_kv_cache(k, v, *cache[:2], slots, *cache[2:])
    return cache, tables


@pytest.mark.parametrize("isa", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_cache_matches_ref(isa, dtype):
    if dtype == Q4 and isa == "cuda":
        return check_q4_refused_on_cuda()
    g = torch.Generator().manual_seed(1)
    hd = 64 if dtype == Q4 else 20
    k = torch.randn(37, 3, hd, generator=g) * 3
    v = torch.randn(37, 3, hd, generator=g)
    k[5] = 0  # an all-zero row: scale 0 for int8 and 4-bit
    k[6, 0, :hd] = torch.linspace(-2, 2, hd) * 1.75  # values on the 4-bit rounding edges (x / d + 8.5 whole)
    slots = torch.randperm(8 * 16, generator=g)[:37]
    slots[[2, 9]] = -1
    dev = device_of(isa)
    got, want = to(dev, *make_cache(8, 16, 3, hd, dtype)), make_cache(8, 16, 3, hd, dtype)
    with running(isa):
        ops.write_kv_cache(k.to(dev), v.to(dev), got[0], got[1], slots.to(dev), *got[2:])
    ops.ref_write_kv_cache(k, v, want[0], want[1], slots, *want[2:])
    for a, b in zip(got, want):
        if a is not None:
            assert torch.equal(a.cpu(), b)


def tol(dtype):
    return dict(atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("isa", VARIANTS)
@pytest.mark.parametrize("dtype,alibi,heads,kv_heads,head_dim",
                         with_dtypes([(True, 4, 4, 32), (True, 6, 2, 12), (False, 4, 1, 16), (True, 2, 2, 128),
                                      (True, 4, 2, 64)]))
def test_decode_ragged(isa, dtype, heads, kv_heads, head_dim, alibi):
    if dtype == Q4 and isa == "cuda":
        return check_q4_refused_on_cuda()
    lens = [1, 5, 16, 17, 40]
    cache, tables = fill(lens, kv_heads, head_dim, dtype)
    q = torch.randn(len(lens), heads, head_dim)
    ctx = torch.tensor(lens, dtype=torch.int32)
    slopes = alibi_slopes(heads) if alibi else None
    dev = device_of(isa)
    with running(isa):  # CUDA: index arrays on the GPU too
        got = ops.paged_attention_decode(*to(dev, q, cache[0], cache[1], tables, ctx), 0.3, *to(dev, slopes, *cache[2:]))
    got = got.cpu()
    want = ops.ref_paged_attention_decode(q, cache[0], cache[1], tables, ctx, 0.3, slopes, *cache[2:])
    torch.testing.assert_close(got, want, **tol(dtype))


@pytest.mark.parametrize("isa", VARIANTS)
@pytest.mark.parametrize("dtype,heads,kv_heads,head_dim", with_dtypes([(4, 4, 32), (6, 2, 12), (2, 2, 128), (4, 2, 64)]))
def test_prefill_ragged_with_cached_prefix(isa, dtype, heads, kv_heads, head_dim):
    if dtype == Q4 and isa == "cuda":
        return check_q4_refused_on_cuda()
    # (context, new tokens): a fresh prompt, a chunk after a cached prefix, a single token, 40 (more than
    # one tile when kv heads are shared), 130 (more than one tile of 64 query rows, in parallel)
    shapes = [(7, 7), (40, 13), (33, 1), (45, 40), (150, 130)]
    cache, tables = fill([c for c, _ in shapes], kv_heads, head_dim, dtype, seed=3)
    qsl = torch.tensor([0] + [n for _, n in shapes], dtype=torch.int32).cumsum(0).to(torch.int32)
    q = torch.randn(int(qsl[-1]), heads, head_dim)
    ctx = torch.tensor([c for c, _ in shapes], dtype=torch.int32)
    slopes = alibi_slopes(heads, 6)
    dev = device_of(isa)
    with running(isa):  # CUDA: index arrays stay on the CPU (the engine's case)
        got = ops.paged_attention_prefill(*to(dev, q, cache[0], cache[1]), tables, ctx, qsl, 0.25, slopes,
                                          *to(dev, *cache[2:])).cpu()
    want = ops.ref_paged_attention_prefill(q, cache[0], cache[1], tables, ctx, qsl, 0.25, slopes, *cache[2:])
    torch.testing.assert_close(got, want, **tol(dtype))


@pytest.mark.parametrize("isa", VARIANTS)
def test_8k_context_decode_and_prefill_chunk(isa):
    ctx_len = 8192
    cache, tables = fill([ctx_len, 300], 1, 16, torch.bfloat16, seed=5)
    slopes = alibi_slopes(2)
    q = torch.randn(2, 2, 16)
    ctx = torch.tensor([ctx_len, 300], dtype=torch.int32)
    dev = device_of(isa)
    dcache = to(dev, *cache[:2])  # CUDA: the decode runs in partitions (8192 keys, 4 query heads)
    with running(isa):
        got = ops.paged_attention_decode(q.to(dev), *dcache, tables, ctx, 0.25, slopes).cpu()
    want = ops.ref_paged_attention_decode(q, *cache[:2], tables, ctx, 0.25, slopes)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    # the last 100 tokens of the 8k sequence as a prefill chunk over the cached 8092
    qsl = torch.tensor([0, 100, 101], dtype=torch.int32)
    q = torch.randn(101, 2, 16)
    with running(isa):
        got = ops.paged_attention_prefill(q.to(dev), *dcache, tables, ctx, qsl, 0.25, slopes).cpu()
    want = ops.ref_paged_attention_prefill(q, *cache[:2], tables, ctx, qsl, 0.25, slopes)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("isa", ISAS)
def test_vector_exp_within_2_ulp_of_torch(isa):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.linspace(-87.0, 88.5, 400_001), torch.randn(20_000, generator=g) * 20,
                   -torch.rand(20_000, generator=g) * 40, torch.tensor([0.0, -0.0, 1e-9, -1e-9, -1e-30])])
    x = x[(x > -87.3) & (x < 88.7)]  # the normal-float range of the result
    with ops.use_isa(isa):
        got = attention_exp(x)
    want = torch.exp(x.double())
    w32 = want.float()
    ulp = (torch.nextafter(w32, torch.tensor(float("inf"))) - w32).double()
    err = ((got.double() - want).abs() / ulp).max().item()
    assert err <= 2.0, f"{isa}: exp off by {err:.2f} ulp"
    # below ln(FLT_MIN) the result is (nearly) 0; above ln(FLT_MAX) inf; NaN stays NaN
    special = torch.tensor([-float("inf"), -300.0, -103.0, -90.0, -87.4, 88.8, 100.0, float("inf"), float("nan")])
    with ops.use_isa(isa):
        got = attention_exp(special)
    want = torch.exp(special)
    torch.testing.assert_close(got[:5], want[:5], atol=1.2e-38, rtol=0)
    assert torch.isinf(got[5:8]).all() and torch.isnan(got[8])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype,heads,kv_heads,head_dim",
                         with_dtypes([(4, 4, 32), (6, 2, 12), (2, 1, 80), (3, 3, 17), (2, 2, 128), (2, 1, 64),
                                      (8, 2, 64), (8, 1, 128)]))  # the last two: 4 and 8 rows a kv head (tile kernel)
@pytest.mark.parametrize("split", [16, 40, 0])
def test_decode_split_contexts_merge(isa, dtype, heads, kv_heads, head_dim, split):
    """Contexts cut into parts of `split` tokens (40: rounded up to 48, whole blocks; 0: automatic,
    which splits the one long sequence below), parts merged by max and sum."""
    lens = [1, 15, 16, 17, 100, 333] if split else [700]
    cache, tables = fill(lens, kv_heads, head_dim, dtype, seed=7)
    q = torch.randn(len(lens), heads, head_dim) * 2
    ctx = torch.tensor(lens, dtype=torch.int32)
    slopes = alibi_slopes(heads)
    for threads in (1, 2):
        with ops.use_isa(isa):
            got = ops.paged_attention_decode(q, *cache[:2], tables, ctx, 0.3, slopes, *cache[2:], num_threads=threads,
                                             split_tokens=split)
        want = ops.ref_paged_attention_decode(q, cache[0], cache[1], tables, ctx, 0.3, slopes, *cache[2:])
        torch.testing.assert_close(got, want, **tol(dtype))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype,heads,kv_heads,head_dim", with_dtypes([(16, 16, 64), (16, 4, 64), (12, 3, 96)]))
@pytest.mark.parametrize("lens", [[100], [70, 130, 40], [300]])
def test_decode_few_sequences_share_heads_among_threads(isa, dtype, heads, kv_heads, head_dim, lens):
    """Fewer sequences (and parts of a split context) than twice the threads: each thread takes a share of the kv
    heads; the result is the reference's, and the same bits as one thread's where no context is long enough to be
    split into parts (300 tokens is: then the parts' merge rounds differently)."""
    cache, tables = fill(lens, kv_heads, head_dim, dtype, seed=5)
    q = torch.randn(len(lens), heads, head_dim) * 2
    ctx = torch.tensor(lens, dtype=torch.int32)
    slopes = alibi_slopes(heads)
    with ops.use_isa(isa):
        one, two, three = (ops.paged_attention_decode(q, *cache[:2], tables, ctx, 0.3, slopes, *cache[2:],
                                                      num_threads=t) for t in (1, 2, 3))
    want = ops.ref_paged_attention_decode(q, cache[0], cache[1], tables, ctx, 0.3, slopes, *cache[2:])
    torch.testing.assert_close(two, want, **tol(dtype))
    torch.testing.assert_close(three, want, **tol(dtype))
    if max(lens) <= 256:
        assert torch.equal(one, two) and torch.equal(one, three)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype,heads,kv_heads,head_dim", with_dtypes([(2, 1, 80), (3, 3, 17), (3, 1, 96)]))
def test_prefill_odd_head_dims_long_prefix(isa, dtype, heads, kv_heads, head_dim):
    shapes = [(337, 37), (21, 21), (290, 1)]  # (context, new tokens): partial blocks, tiles of 16 + a tail
    cache, tables = fill([c for c, _ in shapes], kv_heads, head_dim, dtype, seed=11)
    qsl = torch.tensor([0] + [n for _, n in shapes], dtype=torch.int32).cumsum(0).to(torch.int32)
    q = torch.randn(int(qsl[-1]), heads, head_dim)
    ctx = torch.tensor([c for c, _ in shapes], dtype=torch.int32)
    slopes = alibi_slopes(heads)
    with ops.use_isa(isa):
        got = ops.paged_attention_prefill(q, *cache[:2], tables, ctx, qsl, 0.2, slopes, *cache[2:])
    want = ops.ref_paged_attention_prefill(q, cache[0], cache[1], tables, ctx, qsl, 0.2, slopes, *cache[2:])
    torch.testing.assert_close(got, want, **tol(dtype))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [32, 80])
def test_prefill_tiles_with_larger_blocks(isa, dtype, head_dim, block_size):
    """Blocks of more than 16 keys: the AVX-512 tile kernel takes a block 16 keys at a time; GQA rows of 2 heads
    per kv head, partial last blocks."""
    shapes = [(200, 70), (97, 5), (81, 81)]
    cache, tables = fill([c for c, _ in shapes], 2, head_dim, dtype, block_size=block_size, seed=13)
    qsl = torch.tensor([0] + [n for _, n in shapes], dtype=torch.int32).cumsum(0).to(torch.int32)
    q = torch.randn(int(qsl[-1]), 4, head_dim)
    ctx = torch.tensor([c for c, _ in shapes], dtype=torch.int32)
    slopes = alibi_slopes(4)
    with ops.use_isa(isa):
        got = ops.paged_attention_prefill(q, *cache[:2], tables, ctx, qsl, head_dim ** -0.5, slopes, *cache[2:])
    want = ops.ref_paged_attention_prefill(q, cache[0], cache[1], tables, ctx, qsl, head_dim ** -0.5, slopes,
                                           *cache[2:])
    torch.testing.assert_close(got, want, **tol(dtype))


def test_split_tokens_must_be_non_negative():
    cache, tables = fill([20], 2, 8, torch.float32)
    q, ctx = torch.randn(1, 2, 8), torch.tensor([20], dtype=torch.int32)
    with pytest.raises(ValueError, match="split_tokens"):
        ops.paged_attention_decode(q, *cache[:2], tables, ctx, 1.0, split_tokens=-1)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_bad_arguments_raise(device):
    cache, tables = fill([20], 2, 8, torch.float32)
    cache = to(device, *cache)
    q = torch.randn(1, 4, 8, device=device)
    ctx = torch.tensor([20], dtype=torch.int32)
    bad = tables.clone()
    bad[0, 1] = 999
    with pytest.raises(IndexError, match="outside the cache"):
        ops.paged_attention_decode(q, *cache[:2], bad, ctx, 1.0)
    with pytest.raises(ValueError, match="blocks"):
        ops.paged_attention_decode(q, *cache[:2], tables, torch.tensor([100], dtype=torch.int32), 1.0)
    with pytest.raises(ValueError, match="multiple"):
        ops.paged_attention_decode(torch.randn(1, 3, 8, device=device), *cache[:2], tables, ctx, 1.0)
    with pytest.raises(TypeError, match="int32"):
        ops.paged_attention_decode(q, *cache[:2], tables.long(), ctx, 1.0)
    with pytest.raises(ValueError, match="query count"):
        ops.paged_attention_prefill(torch.randn(5, 4, 8, device=device), *cache[:2], tables, torch.tensor([3], dtype=torch.int32),
                                    torch.tensor([0, 5], dtype=torch.int32), 1.0)
    with pytest.raises(IndexError, match="slot"):
        ops.write_kv_cache(*to(device, torch.randn(1, 2, 8), torch.randn(1, 2, 8)), *cache[:2], torch.tensor([10_000]))
    with pytest.raises(ValueError, match="int8"):
        k8 = torch.zeros(2, 16, 2, 8, dtype=torch.int8, device=device)
        ops.write_kv_cache(*to(device, torch.randn(1, 2, 8), torch.randn(1, 2, 8)), k8, k8.clone(), torch.tensor([0]))
    if device == "cuda":
        with pytest.raises(ValueError, match="query must be on cuda"):
            ops.paged_attention_decode(q.cpu(), *cache[:2], tables, ctx, 1.0)


def test_8k_context_with_int8_kv_within_budget_matches_torch_attention():
    """A model with max_seq_len 16384 runs an 8200-token prompt (prefilled in chunks over a cached
    prefix, then decoded with the split kernel) in an int8 KV cache sized for just those tokens;
    its log-probabilities match the model's own plain-torch forward (float attention, no cache)
    to the rounding of int8 K/V (measured 3.7e-3 here, logprobs of std 0.5; a float32 cache gives 8e-7,
    and the kernels themselves are held to the reference above)."""
    from checkpoints import random_causal_lm

    from engine_vs_forward import greedy_logprobs_against_forward

    from mpt_lite import Engine
    from mpt_lite.runtime.kv_cache import PagedKVCache

    model = random_causal_lm(3, d_model=32, n_heads=2, vocab_size=97, max_seq_len=16384, initializer_range=0.1)
    n, new, bs = 8200, 3, 16
    blocks = (n + new + bs - 1) // bs
    budget = blocks * PagedKVCache.block_bytes(2, 2, 16, bs, torch.int8)
    engine = Engine(model, block_size=bs, max_bytes=budget, kv_dtype=torch.int8, max_batch_tokens=2048)
    assert engine.cache.num_blocks == blocks and engine.uses_native_step
    prompt = torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(0)).tolist()
    for got, want, picked, best in greedy_logprobs_against_forward(model, engine, prompt, new):
        torch.testing.assert_close(got, want, atol=1e-2, rtol=0)
        assert picked >= best - 1e-2  # greedy picked torch's best (up to near-ties)
