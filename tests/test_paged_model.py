"""The model over the paged KV cache: incremental decoding equals a full forward, prefix reuse is
exact and skips work, contexts run past max_seq_len when it is raised."""
import pytest
import torch

from checkpoints import random_causal_lm

from mpt_lite import MptConfig, MptForCausalLM
from mpt_lite.engine import Engine
from mpt_lite.kv_cache import PagedKVCache, PagedStep

VARIANTS = {
    "mha": dict(),
    "gqa_qkln_clip": dict(attn_config={"attn_type": "grouped_query_attention", "kv_n_heads": 2, "qk_ln": True,
                                       "clip_qkv": 0.6}),
    "mqa_6heads_alibi4": dict(d_model=48, n_heads=6, attn_config={"attn_type": "multiquery_attention",
                                                                   "alibi_bias_max": 4}),
    "wpe_no_alibi": dict(attn_config={"alibi": False}, learned_pos_emb=True),
}


def tiny(seed=0, **kw):
    return random_causal_lm(seed, **{"vocab_size": 101, "max_seq_len": 128, **kw})


def paged_logits(model, tokens, chunks, dtype=torch.float32, block_size=4):
    """Runs `tokens` through the paged cache in chunks of the given sizes; logits of every token."""
    cfg = model.config
    cache = PagedKVCache(cfg.n_layers, cfg.kv_n_heads, cfg.head_dim, block_size=block_size, num_blocks=64, dtype=dtype)
    seq = cache.match_prefix(tokens)
    out, at = [], 0
    for n in chunks:
        cache.grow(seq, at + n)
        step = PagedStep(cache, [seq], [at], [at + n])
        with torch.no_grad():
            out.append(model.forward_paged(torch.tensor(tokens[at:at + n]), step))
        at += n
        cache.commit(seq, tokens, at)
    return torch.cat(out)


@pytest.mark.parametrize("variant", VARIANTS)
def test_incremental_paged_equals_full_forward(variant):
    model = tiny(**VARIANTS[variant])
    tokens = torch.randint(0, 101, (30,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        full = model(torch.tensor([tokens])).logits[0]
    # a prompt prefill, a chunk, then token-by-token decoding
    got = paged_logits(model, tokens, [9, 7] + [1] * 14)
    torch.testing.assert_close(got, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype,min_cos", [(torch.bfloat16, 0.999), (torch.float16, 0.9999), (torch.int8, 0.999)])
def test_low_precision_kv_cache_stays_close(dtype, min_cos):
    model = tiny()
    tokens = list(range(3, 33))
    with torch.no_grad():
        full = model(torch.tensor([tokens])).logits[0]
    got = paged_logits(model, tokens, [10] + [1] * 20, dtype=dtype)
    cos = torch.nn.functional.cosine_similarity(got, full, dim=-1)
    assert cos.min() > min_cos, cos.min()
    assert (got.argmax(-1) == full.argmax(-1)).float().mean() > 0.9


def test_ragged_batch_step_equals_each_alone():
    model = tiny(**VARIANTS["gqa_qkln_clip"])
    cfg = model.config
    prompts = [list(range(1, 6)), list(range(10, 33)), [7]]
    cache = PagedKVCache(cfg.n_layers, cfg.kv_n_heads, cfg.head_dim, num_blocks=16, block_size=4)
    seqs = [cache.match_prefix(p) for p in prompts]
    for s, p in zip(seqs, prompts):
        cache.grow(s, len(p))
    step = PagedStep(cache, seqs, [0, 0, 0], [len(p) for p in prompts])
    with torch.no_grad():
        logits = model.forward_paged(torch.tensor(sum(prompts, [])), step, step.last_rows)
        for i, p in enumerate(prompts):
            torch.testing.assert_close(logits[i], model(torch.tensor([p])).logits[0, -1], atol=1e-4, rtol=1e-4)


def test_prefix_reuse_identical_logits_and_skipped_work():
    model = tiny()
    system = list(range(1, 41))  # 40 tokens: 2 full blocks of 16 and a partial one
    a, b = system + [50, 51, 52], system + [60, 61]
    engine = Engine(model, num_blocks=32)
    ra = engine.add_request(a, 5)
    list(engine.run())
    computed = engine.stats["computed_tokens"]
    rb = engine.add_request(b, 5)
    list(engine.run())
    assert engine.stats["cached_prompt_tokens"] == 32
    assert engine.stats["computed_tokens"] - computed == len(b) - 32 + 4  # the rest of the prompt, 4 decodes
    fresh = Engine(model, num_blocks=32, prefix_caching=False)
    rb2 = fresh.add_request(b, 5)
    list(fresh.run())
    assert rb.output == rb2.output
    # and the logits themselves: the prefilled tail over shared blocks vs a full forward
    cfg = model.config
    cache = PagedKVCache(cfg.n_layers, cfg.kv_n_heads, cfg.head_dim, num_blocks=16)
    s1 = cache.match_prefix(a)
    cache.grow(s1, len(a))
    with torch.no_grad():
        model.forward_paged(torch.tensor(a), PagedStep(cache, [s1], [0], [len(a)]))
    cache.commit(s1, a, len(a))
    s2 = cache.match_prefix(b)
    assert s2.num_cached == 32 and s2.table[:2] == s1.table[:2]
    cache.grow(s2, len(b))
    with torch.no_grad():
        tail = model.forward_paged(torch.tensor(b[32:]), PagedStep(cache, [s2], [32], [len(b)]))
        full = model(torch.tensor([b])).logits[0, 32:]
    torch.testing.assert_close(tail, full, atol=1e-4, rtol=1e-4)
    assert ra.output  # the first request ran too


def test_context_past_max_seq_len_when_raised(tmp_path):
    model = tiny(max_seq_len=24)
    prompt = torch.arange(1, 21).view(1, -1)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(prompt, max_new_tokens=20)
    model.save_pretrained(tmp_path)
    big = MptForCausalLM.from_pretrained(tmp_path, max_seq_len=64).eval()
    out = big.generate(prompt, max_new_tokens=30)
    ids = prompt
    with torch.no_grad():
        for _ in range(30):
            ids = torch.cat([ids, big(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
