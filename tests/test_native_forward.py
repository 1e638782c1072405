"""forward() of a quantized causal LM as one native call (runtime/native_forward.py) against the
per-op path on the same weights (MPT_LITE_NATIVE_STEP=0, itself held to transformers and to the
weights-only simulation by the parity tests): logits, loss and top-1; and the per-op path wherever
the native one would not return the same thing (padding, a cache, hidden states, training mode)."""
import pytest
import torch

from checkpoints import quantized, random_causal_lm

from mpt_lite import ops
from mpt_lite.kernels import decode_step, quant_ops
from mpt_lite.runtime import native_forward

VOCAB = 101
FORMATS = {"int8": ("int8", "int8"), "nf4": ("nf4", "nf4"), "int4": ("int4", "int4"),
           "int4_int8_embedding": ("int4", "int8")}
CONFIGS = {
    "mha": dict(),
    "gqa_clip_biases_logit_scale": dict(attn_config={"attn_type": "grouped_query_attention", "kv_n_heads": 2,
                                                     "clip_qkv": 0.8}, no_bias=False, logit_scale=0.5),
    "mqa_no_alibi_no_wpe": dict(attn_config={"attn_type": "multiquery_attention", "alibi": False},
                                learned_pos_emb=False),
    "alibi4_6heads_softmax_scale": dict(d_model=48, n_heads=6, attn_config={"alibi_bias_max": 4,
                                                                             "softmax_scale": 0.3}),
}


def tiny(fmt="int4", **kw):
    return quantized(random_causal_lm(0, vocab_size=VOCAB, max_seq_len=256, **kw), *FORMATS[fmt])


@pytest.fixture
def native_calls(monkeypatch):
    """Counts the forward() calls that took the native path."""
    calls = []
    real = native_forward.logits

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(native_forward, "logits", spy)
    return calls


@pytest.fixture
def float_activations(monkeypatch):
    """Both paths with float32 activations in every matmul, so that they agree to float32 rounding
    (as shipped, an activation within an ulp of a q8 rounding boundary may round differently on one path)."""
    monkeypatch.setattr(quant_ops, "use_q8", lambda q8, rows, gemm_k=None: bool(q8))
    monkeypatch.setattr(decode_step, "Q8_MAX_ROWS", 0)
    monkeypatch.setattr(decode_step, "Q8_GEMM_MIN_K", 0)
    with ops.use_amx(False):
        yield


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
        out = model(ids, use_cache=True)
        assert out.past_key_values is not None
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
