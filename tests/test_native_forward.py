"""forward() of a quantized causal LM as one native call (runtime/native_forward.py) against the
per-op path on the same weights (MPT_LITE_NATIVE_STEP=0, itself held to transformers and to the
weights-only simulation by the parity tests): logits, loss, top-1 and the returned past_key_values; and
the per-op path wherever the native one would not return the same thing (padding, hidden states,
training mode)."""
import pytest
import torch

from checkpoints import STEP_CONFIGS, quantized, random_causal_lm

from mpt_lite.model.cache import MptCache
from mpt_lite.runtime import native_forward

VOCAB = 101
FORMATS = {"int8": ("int8", "int8"), "nf4": ("nf4", "nf4"), "int4": ("int4", "int4"),
           "int4_int8_embedding": ("int4", "int8"), "int4_int6_embedding": ("int4", "int6")}
CONFIGS = {k: v for k, v in STEP_CONFIGS.items() if k != "untied_float_lm_head"}  # (a float lm_head: per-op)


def tiny(fmt="int4", **kw):
    return quantized(random_causal_lm(0, vocab_size=VOCAB, max_seq_len=256, **kw), *FORMATS[fmt])


@pytest.fixture
def native_calls(monkeypatch):
    """Counts the forward() calls that took the native path."""
    calls = []
    real = native_forward.forward

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(native_forward, "forward", spy)
    return calls


def per_op(monkeypatch, model, *args, **kw):
    monkeypatch.setenv("MPT_LITE_NATIVE_STEP", "0")
    try:
        with torch.inference_mode():
            return model(*args, **kw)
    finally:
        monkeypatch.delenv("MPT_LITE_NATIVE_STEP")


def native(model, *args, **kw):
    with torch.inference_mode():
        return model(*args, **kw)


def assert_close(got, want, rel):
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= rel * want.abs().max().item(), (got - want).abs().max().item()


def ids_of(batch, tokens, seed=0):
    return torch.randint(0, VOCAB, (batch, tokens), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("config", CONFIGS)
def test_native_forward_equals_per_op_path(fmt, config, native_calls, float_activations, monkeypatch):
    model = tiny(fmt, **CONFIGS[config])
    ids = ids_of(3, 37)  # 37 tokens: three blocks of 16, the last one partly filled; more than the q8 row limit
    for keep in (0, 1, 5):
        want = per_op(monkeypatch, model, ids, logits_to_keep=keep).logits
        got = native(model, ids, logits_to_keep=keep).logits
        assert_close(got, want, 1e-4)
        assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert len(native_calls) == 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_native_forward_as_shipped(fmt, native_calls, monkeypatch):
    """q8 activations as shipped: the paths' norms differ in float32 summation order, so one activation
    may land on the neighbouring int8 code on one path only (quant_ops.py bounds it): 1e-2, same top-1."""
    model = tiny(fmt)
    for batch, tokens in ((1, 1), (1, 16), (2, 50)):
        ids = ids_of(batch, tokens, seed=tokens)
        want = per_op(monkeypatch, model, ids).logits
        got = native(model, ids).logits
        assert_close(got, want, 1e-2)
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.95
    assert len(native_calls) == 3


def test_native_forward_loss_and_mask_of_ones(native_calls, float_activations, monkeypatch):
    model = tiny()
    ids = ids_of(2, 20)
    labels = ids.clone()
    labels[0, :5] = -100
    want = per_op(monkeypatch, model, ids, labels=labels)
    got = native(model, ids, labels=labels, attention_mask=torch.ones_like(ids))
    assert_close(got.logits, want.logits, 1e-4)
    assert abs(got.loss.item() - want.loss.item()) <= 1e-4 * abs(want.loss.item())
    assert got.past_key_values is None and got.hidden_states is None
    assert len(native_calls) == 1


def test_logits_to_keep_beyond_the_prompt(native_calls, float_activations, monkeypatch):
    model = tiny()
    ids = ids_of(1, 6)
    want = per_op(monkeypatch, model, ids, logits_to_keep=50).logits
    got = native(model, ids, logits_to_keep=50).logits
    assert got.shape == (1, 6, VOCAB)
    assert_close(got, want, 1e-4)


def test_falls_back_where_the_native_path_would_differ(native_calls, monkeypatch):
    model = tiny()
    ids = ids_of(2, 12)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    with torch.inference_mode():
        model(ids, attention_mask=mask)
        out = model(ids, output_hidden_states=True)
        assert len(out.hidden_states) == model.config.n_layers + 1
        model(ids, logits_to_keep=torch.tensor([0, 3]))
        model(inputs_embeds=torch.randn(1, 4, model.config.d_model))
    assert native_calls == []
    # training mode (dropout) and the switch
    model.train()
    with torch.inference_mode():
        model(ids)
    model.eval()
    monkeypatch.setenv("MPT_LITE_NATIVE_STEP", "0")
    with torch.inference_mode():
        model(ids)
    assert native_calls == []
    monkeypatch.delenv("MPT_LITE_NATIVE_STEP")
    # float models keep torch's matmuls
    with torch.inference_mode():
        random_causal_lm(0, vocab_size=VOCAB)(ids)
    assert native_calls == []
    # grad enabled: the quantized matmuls carry no graph on either path, so the native one is taken too
    want = per_op(monkeypatch, model, ids).logits
    got = model(ids).logits
    assert not got.requires_grad and not want.requires_grad
    assert len(native_calls) == 1


def test_bad_input_gets_the_per_op_paths_errors(native_calls):
    model = tiny()
    with torch.inference_mode():
        with pytest.raises(IndexError, match="token id 101 is out of range"):
            model(torch.tensor([[1, 101]]))
        with pytest.raises(IndexError, match="token id -1 is out of range"):
            model(torch.tensor([[-1, 3]]))
        with pytest.raises(ValueError, match="exceed max_seq_len"):
            model(torch.zeros(1, 300, dtype=torch.long))
        with pytest.raises(ValueError, match="logits_to_keep must be >= 0"):
            model(torch.tensor([[1, 2]]), logits_to_keep=-1)
        with pytest.raises(ValueError, match="attention_mask must have shape"):
            model(torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 3))
        with pytest.raises(TypeError, match="input_ids must hold integer"):
            model(torch.tensor([[1.0, 2.0]]))


def assert_caches_close(got, want, rel=1e-4):
    assert len(got) == len(want)
    for (gk, gv), (wk, wv) in zip(got, want):
        assert_close(gk, wk, rel)
        assert_close(gv, wv, rel)


def decode_loop(model, ids, steps, run, past=None, **kw):
    """A transformers-style loop: the prompt with use_cache=True, then one greedy token a call with the
    returned cache. Returns every call's logits and the last cache."""
    out = run(model, ids, past_key_values=past, use_cache=True, **kw)
    logits = [out.logits[:, -1]]
    for _ in range(steps):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        out = run(model, nxt, past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits[:, -1])
    return logits, out.past_key_values


@pytest.mark.parametrize("fmt", ["int8", "int4", "nf4"])
@pytest.mark.parametrize("config", ["mha", "gqa_clip_biases_logit_scale"])
def test_past_key_values_loop(fmt, config, native_calls, float_activations, monkeypatch):
    model = tiny(fmt, **CONFIGS[config])
    ids = ids_of(2, 21)
    want, want_cache = decode_loop(model, ids, 12, lambda *a, **kw: per_op(monkeypatch, *a, **kw))
    got, got_cache = decode_loop(model, ids, 12, native)
    assert len(native_calls) == 13
    for g, w in zip(got, want):
        assert_close(g, w, 1e-4)
        assert torch.equal(g.argmax(-1), w.argmax(-1))
    assert got_cache.get_seq_length() == 33
    assert_caches_close(got_cache, want_cache)


def test_long_past_is_bounded_correctly(native_calls, float_activations, monkeypatch):
    """A past of 200 tokens copied into the call's cache with its key bounds: attention skips the blocks
    ALiBi makes negligible only where the bounds prove it. The first block's keys are made 300x larger,
    so that in some heads they dominate from 190 tokens back; bounds of zero would skip them."""
    model = tiny("int8")
    ids = ids_of(1, 200)
    past = per_op(monkeypatch, model, ids, use_cache=True).past_key_values
    past = MptCache([(torch.cat([k[:, :, :16] * 300, k[:, :, 16:]], dim=2), v) for k, v in past])
    nxt = ids_of(1, 3, seed=5)
    want = per_op(monkeypatch, model, nxt, past_key_values=past)
    got = native(model, nxt, past_key_values=past)
    assert_close(got.logits, want.logits, 1e-4)
    assert_caches_close(got.past_key_values, want.past_key_values)


def test_branches_from_one_prefix_stay_apart(native_calls, float_activations, monkeypatch):
    """The returned cache is new on every call: two continuations of one prefix do not disturb each
    other or the prefix (as the per-op path's caches)."""
    model = tiny()
    prefix = native(model, ids_of(1, 18), use_cache=True).past_key_values
    before = [(k.clone(), v.clone()) for k, v in prefix]
    a = native(model, ids_of(1, 4, seed=1), past_key_values=prefix, use_cache=True)
    b = native(model, ids_of(1, 4, seed=2), past_key_values=prefix, use_cache=True)
    a_again = per_op(monkeypatch, model, ids_of(1, 4, seed=1), past_key_values=prefix, use_cache=True)
    assert_close(a.logits, a_again.logits, 1e-4)
    assert_caches_close(a.past_key_values, a_again.past_key_values)
    assert not torch.equal(a.past_key_values[0][0], b.past_key_values[0][0])
    for (k, v), (k0, v0) in zip(prefix, before):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    assert len(native_calls) == 3


def test_past_from_either_path_and_as_tuples(native_calls, float_activations, monkeypatch):
    model = tiny()
    ids, nxt = ids_of(2, 9), ids_of(2, 2, seed=3)
    past = per_op(monkeypatch, model, ids, use_cache=True).past_key_values
    want = per_op(monkeypatch, model, nxt, past_key_values=past, attention_mask=torch.ones(2, 11))
    # legacy tuples in bfloat16 (the per-op path casts them to the model's dtype; so does the copy)
    legacy = tuple((k.bfloat16(), v.bfloat16()) for k, v in past.to_legacy_cache())
    got = native(model, nxt, past_key_values=legacy, attention_mask=torch.ones(2, 11))
    want_bf16 = per_op(monkeypatch, model, nxt, past_key_values=legacy)
    assert_close(got.logits, want_bf16.logits, 1e-4)
    got = native(model, nxt, past_key_values=past)  # use_cache off: a past still returns the cache
    assert_close(got.logits, want.logits, 1e-4)
    assert got.past_key_values.get_seq_length() == 11
    assert len(native_calls) == 2


def test_a_past_that_does_not_fit_gets_the_per_op_paths_errors(native_calls):
    model = tiny()
    with torch.inference_mode():
        past = model(ids_of(1, 5), use_cache=True).past_key_values
        with pytest.raises(ValueError, match="past_key_values is for batch 1"):
            model(ids_of(2, 1), past_key_values=past)
        with pytest.raises(ValueError, match="past_key_values has 1 layers"):
            model(ids_of(1, 1), past_key_values=past.to_legacy_cache()[:1])
        with pytest.raises(TypeError, match="past_key_values must be"):
            model(ids_of(1, 1), past_key_values="cache")
        with pytest.raises(ValueError, match="attention_mask must have shape"):
            model(ids_of(1, 1), past_key_values=past, attention_mask=torch.ones(1, 1))
        with pytest.raises(ValueError, match="exceed max_seq_len"):
            model(torch.zeros(1, 252, dtype=torch.long), past_key_values=past)
    assert len(native_calls) == 1


def test_a_decode_loop_appends_in_place_and_grows(native_calls, float_activations, monkeypatch):
    """Each call of a loop extends the storage its past views (no copy, the same plan) until it is full;
    then a larger one takes over. Every step equals the per-op path's."""
    model = quantized(random_causal_lm(0, vocab_size=VOCAB, max_seq_len=1024), "int4", "int4")
    ids = ids_of(1, 5)
    want, want_cache = decode_loop(model, ids, 300, lambda *a, **kw: per_op(monkeypatch, *a, **kw))
    storages = []
    real = native_forward.forward

    def watch(*a, **kw):
        out = real(*a, **kw)
        storages.append(out[1].storage)
        return out

    monkeypatch.setattr(native_forward, "forward", watch)
    got, got_cache = decode_loop(model, ids, 300, native)
    for g, w in zip(got, want):
        assert_close(g, w, 1e-4)
    assert_caches_close(got_cache, want_cache)
    distinct = list(dict.fromkeys(map(id, storages)))
    assert len(distinct) == 2  # 5 + 256 tokens of room (272 slots), then a new storage with room again
    assert storages[0].capacity == 272 and storages[-1].capacity >= 306


def test_loops_in_two_threads_equal_one_at_a_time(native_calls, float_activations):
    """Two Python threads run decode loops on one model, one of them branching from a shared prefix the
    other extends: each storage is claimed by one call at a time, so the results are those of running
    the loops one after the other."""
    import threading

    model = tiny()
    prefix = native(model, ids_of(1, 20), use_cache=True)
    alone = [decode_loop(model, ids_of(1, 3, seed=s), 20, native, past=prefix.past_key_values)[0] for s in (1, 2)]
    results = [None, None]

    def run(i):
        results[i] = decode_loop(model, ids_of(1, 3, seed=i + 1), 20, native, past=prefix.past_key_values)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, alone):
        for g, w in zip(got, want):
            assert torch.equal(g, w)


def test_a_kept_cache_does_not_keep_the_models_weights():
    """The storage's plan holds the weights' buffers; it is dropped when the model goes, so a cache kept
    after its model is deleted holds only K and V."""
    import gc

    model = tiny()
    out = native(model, ids_of(1, 10), use_cache=True)
    storage = out.past_key_values.storage
    assert storage.plan is not None
    del model
    gc.collect()
    assert storage.plan is None and storage.model() is None
