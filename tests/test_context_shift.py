"""Context shift: when a sequence passes its window, the engine drops its oldest whole KV blocks
after the first n_keep tokens (rounded up to whole blocks) and goes on without recomputing. The
oracle is the model's own torch forward with its plain past_key_values, from which exactly the
dropped positions are cut: ALiBi then measures distances over the kept positions."""
import pytest
import torch

from checkpoints import random_causal_lm

import mpt_lite
from mpt_lite import Engine
from mpt_lite.runtime.kv_cache import PagedStep
from mpt_lite.model.cache import MptCache

BS = 8


def tiny(seed=0, **kw):
    return random_causal_lm(seed, **{"vocab_size": 300, "max_seq_len": 48, **kw})


def cut(cache, a, b):
    return MptCache([(torch.cat([k[:, :, :a], k[:, :, b:]], 2), torch.cat([v[:, :, :a], v[:, :, b:]], 2))
                     for k, v in cache])


def torch_shifting_greedy(model, prompt, n_new, n_keep, window):
    """Plain torch decoding that drops the oldest block after the kept ones whenever one more token
    would pass the window: (tokens, logits of the last step, number of shifts)."""
    kept = -(-n_keep // BS) * BS
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        past, logits, toks, shifts = out.past_key_values, out.logits[0, -1], [], 0
        for _ in range(n_new):
            tok = int(logits.argmax())
            toks.append(tok)
            if past.get_seq_length() + 1 > window:
                past, shifts = cut(past, kept, kept + BS), shifts + 1
            out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[0, -1]
    return toks, logits, shifts


def engine_next_logits(engine, req):
    """The next-token logits of a finished keep_cache request, computed on its paged cache."""
    seq, n = req.blocks, len(req.tokens)
    step = PagedStep(engine.cache, [seq], [n - 1], [n])
    with torch.inference_mode():
        return engine.model.forward_paged(torch.tensor(req.tokens[-1:]), step, step.last_rows)[0]


@pytest.mark.parametrize("n_keep", [0, 5, 8])
def test_decode_past_max_seq_len_matches_torch_over_kept_keys(n_keep):
    model = tiny(seed=n_keep)
    prompt = list(range(3, 33))
    n_new = 60  # window 48: shifts every block once past it
    engine = Engine(model, num_blocks=32, block_size=BS)
    req = engine.add_request(prompt, n_new, context_shift=True, n_keep=n_keep, keep_cache=True)
    list(engine.run())
    want, want_logits, shifts = torch_shifting_greedy(model, prompt, n_new, n_keep, 48)
    assert shifts > 3
    assert req.output == want
    assert req.blocks.dropped == shifts * BS
    assert req.blocks.kv_len(len(req.tokens)) <= 48
    got = engine_next_logits(engine, req)
    assert (got - want_logits).abs().max() < 1e-4


def test_freed_blocks_return_to_the_pool_and_greedy_before_the_shift_is_unchanged():
    model = tiny(seed=3)
    prompt = list(range(10, 40))
    engine = Engine(model, num_blocks=32, block_size=BS)
    req = engine.add_request(prompt, 50, context_shift=True, n_keep=4, keep_cache=True)
    list(engine.run())
    held = len(req.blocks.table)
    assert held == -(-(len(req.tokens) - req.blocks.dropped) // BS) <= 6
    assert engine.cache.num_free_blocks == 32 - held
    engine.release(req)
    assert engine.cache.num_free_blocks == 32
    ref = Engine(model, num_blocks=32, block_size=BS)
    plain = ref.add_request(prompt, 18)  # 48 tokens: no shift needed
    list(ref.run())
    assert req.output[:18] == plain.output


def test_shared_prefix_blocks_are_never_modified_for_another_sequence():
    model = tiny(seed=4)
    prompt = list(range(50, 90))  # 5 full blocks
    engine = Engine(model, num_blocks=40, block_size=BS)
    engine.add_request(prompt, 2)
    list(engine.run())
    snapshot = [(k.clone(), v.clone()) for k, v in zip(engine.cache.k, engine.cache.v)]
    shared = engine.add_request(prompt + [7, 8, 9], 30, context_shift=True, n_keep=8, keep_cache=True)
    other = engine.add_request(prompt + [1], 4)
    list(engine.run())
    assert engine.stats["cached_prompt_tokens"] >= 2 * 32
    assert shared.blocks.dropped > 0
    hashed = engine.cache.match_prefix(prompt + [0])
    assert len(hashed.table) == 5  # the prefix is still shared, under keys that describe its contents
    for b in hashed.table:  # and its blocks hold exactly what they held
        for (k0, v0), k, v in zip(snapshot, engine.cache.k, engine.cache.v):
            assert torch.equal(k0[b], k[b]) and torch.equal(v0[b], v[b])
    ref = Engine(model, num_blocks=40, block_size=BS)
    r = ref.add_request(prompt + [1], 4)
    list(ref.run())
    assert other.output == r.output


def test_prompt_longer_than_the_window_is_prefilled_in_chunks():
    model = tiny(seed=5)
    prompt = [int(t) for t in torch.randint(0, 300, (130,), generator=torch.Generator().manual_seed(0))]
    engine = Engine(model, num_blocks=16, block_size=BS, max_batch_tokens=16)
    req = engine.add_request(prompt, 20, context_shift=True, n_keep=3)
    list(engine.run())
    assert len(req.output) == 20 and req.finish_reason == "length"
    with pytest.raises(ValueError, match="max_seq_len"):
        Engine(model, num_blocks=16, block_size=BS).add_request(prompt, 20)


def test_kv_budget_smaller_than_max_seq_len_shifts_instead_of_failing():
    model = tiny(seed=6, max_seq_len=256)
    engine = Engine(model, num_blocks=6, block_size=BS)  # 48 tokens of cache for a 256-token model
    req = engine.add_request(list(range(1, 20)), 80, context_shift=True, n_keep=2, keep_cache=True)
    list(engine.run())
    assert len(req.output) == 80 and req.blocks.dropped > 0


def test_bad_settings_are_refused():
    engine = Engine(tiny(), num_blocks=32, block_size=BS)
    with pytest.raises(ValueError, match="n_keep"):
        engine.add_request([1, 2], 4, context_shift=True, n_keep=41)
    with pytest.raises(ValueError, match="n_keep"):
        engine.add_request([1, 2], 4, context_shift=True, n_keep=-1)
    wpe = random_causal_lm(0, vocab_size=300, max_seq_len=48, learned_pos_emb=True,
                           attn_config={"alibi": False})
    with pytest.raises(ValueError, match="ALiBi"):
        Engine(wpe, num_blocks=32).add_request([1, 2], 4, context_shift=True)
    with pytest.raises(ValueError, match="ALiBi"):
        wpe.generate(torch.tensor([[1, 2]]), max_new_tokens=2, context_shift=True)


def test_prompt_lookup_with_context_shift_gives_the_same_tokens():
    model = random_causal_lm(8, vocab_size=40, max_seq_len=48)
    prompt = [3, 4, 5, 6, 7] * 6
    outs = []
    for k in (None, 6):
        engine = Engine(model, num_blocks=32, block_size=BS)
        req = engine.add_request(prompt, 70, context_shift=True, n_keep=5, prompt_lookup_num_tokens=k)
        list(engine.run())
        outs.append(req)
    assert outs[1].output == outs[0].output and outs[1].accepted > 10
