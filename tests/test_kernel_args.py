"""The kernel boundary: _C takes keyword arguments only and checks buffers and sizes; every op takes
a per-call num_threads (checked, results as the references at any count); a model's num_threads
reaches its quantized layers."""
import pytest
import torch

import mpt_lite
from mpt_lite import _C, kernels
from mpt_lite.kernels import reference as ref
from mpt_lite.model.layers import alibi_slopes
from mpt_lite.quant import QuantEmbedding, QuantLinear

from checkpoints import random_causal_lm


def test_c_entry_points_take_keywords_only():
    x, cb, scb, y = torch.randn(2, 8), torch.zeros(4, 8, dtype=torch.int8), torch.ones(4), torch.empty(2, 4)
    args = dict(x=x.data_ptr(), m=2, k=8, cb=cb.data_ptr(), scb=scb.data_ptr(), n=4, bias=0, y=y.data_ptr(), q8=False)
    with pytest.raises(TypeError):
        _C.matmul_int8(*args.values())  # the old positional order
    with pytest.raises(TypeError):
        _C.matmul_int8(**{**args, "rows": 2})  # a name that is not an argument
    _C.matmul_int8(**args)
    assert torch.equal(y, torch.zeros(2, 4))


@pytest.mark.parametrize("change,message", [({"x": 0}, "x is a null pointer"), ({"y": 0}, "y is a null pointer"),
                                            ({"n": -1}, "n must be >= 0"), ({"num_threads": -2}, "num_threads")])
def test_c_entry_points_reject_null_buffers_and_bad_sizes(change, message):
    x, cb, scb, y = torch.randn(2, 8), torch.zeros(4, 8, dtype=torch.int8), torch.ones(4), torch.empty(2, 4)
    args = dict(x=x.data_ptr(), m=2, k=8, cb=cb.data_ptr(), scb=scb.data_ptr(), n=4, bias=0, y=y.data_ptr(), q8=False)
    with pytest.raises(ValueError, match=message):
        _C.matmul_int8(**{**args, **change})


def test_cache_and_attention_structs_check_their_fields():
    k = torch.zeros(4, 2, 8)
    good = dict(k=k.data_ptr(), v=k.data_ptr(), dtype=0, num_slots=4, kv_heads=2, head_dim=8, block_size=2)
    cache = _C.KvCache(**good)
    assert (cache.num_slots, cache.kv_heads, cache.head_dim, cache.block_size) == (4, 2, 8, 2)
    with pytest.raises(ValueError, match="kv_heads must be > 0"):
        _C.KvCache(**{**good, "kv_heads": 0})
    with pytest.raises(ValueError, match="k_scale"):
        _C.KvCache(**{**good, "dtype": 3})  # int8 without scales
    with pytest.raises(ValueError, match="dtype code"):
        _C.KvCache(**{**good, "dtype": 7})
    with pytest.raises(TypeError):
        _C.KvCache(*good.values())
    q, tables, lens = torch.randn(1, 2, 8), torch.zeros(1, 2, dtype=torch.int32), torch.ones(1, dtype=torch.int32)
    attn = dict(q=q.data_ptr(), out=q.data_ptr(), num_tokens=1, num_heads=2, head_dim=8, num_seqs=1,
                block_tables=tables.data_ptr(), max_blocks=2, context_lens=lens.data_ptr(), scale=1.0)
    with pytest.raises(ValueError, match="context_lens is a null pointer"):
        _C.AttnArgs(**{**attn, "context_lens": 0})
    with pytest.raises(ValueError, match="prefill needs query_start_loc"):
        _C.paged_attention(decode=False, args=_C.AttnArgs(**attn), cache=cache)
    with pytest.raises(ValueError, match="head_dim 4 differs"):
        _C.paged_attention(decode=True, args=_C.AttnArgs(**{**attn, "head_dim": 4}), cache=cache)


@pytest.mark.parametrize("bad,err", [(0, ValueError), (-1, ValueError), (True, TypeError), (1.5, TypeError),
                                     ("2", TypeError)])
def test_num_threads_argument_is_checked(bad, err):
    w = torch.randn(16, 32)
    with pytest.raises(err, match="num_threads"):
        kernels.matmul_int4(torch.randn(1, 32), *kernels.quantize_int4(w), 32, num_threads=bad)
    with pytest.raises(err, match="num_threads"):
        kernels.quantize_nf4(w, num_threads=bad)


@pytest.mark.parametrize("fmt", ["int8", "nf4", "int4"])
def test_matmul_and_dequantize_at_each_thread_count_equal_the_reference(fmt):
    N, K = 300, 200
    w = torch.randn(N, K)
    for threads in (1, 2, 3, None):
        kw = {"num_threads": threads}
        if fmt == "int8":
            q = kernels.quantize_int8(w, **kw)
            assert all(torch.equal(a, b) for a, b in zip(q, ref.ref_quantize_int8(w)))
            deq, want_deq = kernels.dequantize_int8(*q, **kw), ref.ref_dequantize_int8(*q)
        elif fmt == "nf4":
            q = kernels.quantize_nf4(w, **kw)
            assert all(torch.equal(a, b) for a, b in zip(q, ref.ref_quantize_nf4(w)))
            deq, want_deq = kernels.dequantize_nf4(*q, (N, K), **kw), ref.ref_dequantize_nf4(*q, (N, K))
        else:
            q = kernels.quantize_int4(w, **kw)
            assert all(torch.equal(a, b) for a, b in zip(q, ref.ref_quantize_int4(w)))
            deq, want_deq = kernels.dequantize_int4(*q, K, **kw), ref.ref_dequantize_int4(*q, K)
        torch.testing.assert_close(deq, want_deq, rtol=0, atol=0)
        for M in (1, 40):
            x = torch.randn(M, K)
            bf16 = kernels.bf16_operands(None, M, K)  # the AMX tiles where enabled (not at this K)
            if fmt == "int8":
                y, want = kernels.matmul_int8(x, *q, **kw), ref.ref_matmul_int8(x, *q, bf16=bf16)
            elif fmt == "nf4":
                y, want = kernels.matmul_nf4(x, *q, (N, K), **kw), ref.ref_matmul_nf4(x, *q, (N, K), bf16=bf16)
            else:
                y, want = kernels.matmul_int4(x, *q, K, **kw), ref.ref_matmul_int4(x, *q, K, bf16=bf16)
            torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)


def test_paged_attention_at_each_thread_count_equals_the_reference():
    g = torch.Generator().manual_seed(0)
    seqs, heads, hd, bs, ctx = 8, 4, 64, 16, 256  # enough work to leave the calling thread
    blocks = seqs * ctx // bs
    k_cache, v_cache = torch.randn(blocks, bs, heads, hd, generator=g), torch.randn(blocks, bs, heads, hd, generator=g)
    tables = torch.randperm(blocks, generator=g).to(torch.int32).view(seqs, ctx // bs)
    lens = torch.full((seqs,), ctx, dtype=torch.int32)
    q = torch.randn(seqs, heads, hd, generator=g)
    slopes = alibi_slopes(heads)
    want = ref.ref_paged_attention_decode(q, k_cache, v_cache, tables, lens, 0.125, slopes)
    for threads in (1, 2, 3):
        got = kernels.paged_attention_decode(q, k_cache, v_cache, tables, lens, 0.125, slopes, num_threads=threads)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_set_num_threads_is_checked():
    with pytest.raises(TypeError):
        kernels.set_num_threads("2")
    with pytest.raises(TypeError):
        kernels.set_num_threads(True)


def test_model_num_threads_reaches_every_quantized_layer(tmp_path):
    model = random_causal_lm(0, vocab_size=300, max_seq_len=64)
    model.save_pretrained(tmp_path)
    q = mpt_lite.MptForCausalLM.from_pretrained(tmp_path, bits=4, quant_type="int4")
    layers = [m for m in q.modules() if isinstance(m, (QuantLinear, QuantEmbedding))]
    assert layers and q.num_threads is None and all(m.num_threads is None for m in layers)
    ids = torch.tensor([[5, 9, 2, 40, 7]])
    with torch.no_grad():
        logits = q(input_ids=ids).logits
    tokens = q.generate(ids, max_new_tokens=5)
    q.num_threads = 1
    assert q.num_threads == 1 and q.transformer.num_threads == 1 and all(m.num_threads == 1 for m in layers)
    with torch.no_grad():  # each output row is computed whole by one thread, at any thread count
        assert torch.equal(q(input_ids=ids).logits, logits)
    assert torch.equal(q.generate(ids, max_new_tokens=5), tokens)
    q.num_threads = None
    assert all(m.num_threads is None for m in layers)
    for bad in (0, -3, 1.5, True, "4"):
        with pytest.raises(ValueError, match="num_threads"):
            q.num_threads = bad
    assert torch.get_num_threads() == 1  # conftest's setting: the model never touches torch's
