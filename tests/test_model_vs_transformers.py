"""Every head against transformers' MPT classes on the same weights (the oracle), float32."""
import pytest
import torch

import mpt_lite
from checkpoints import load_hf, random_state, tiny_config, write_single_safetensors

TOL = 1e-4
HEADS = ["MptModel", "MptForCausalLM", "MptForSequenceClassification", "MptForTokenClassification",
         "MptForQuestionAnswering"]
CONFIGS = {
    "6heads": tiny_config(n_heads=6),
    "12heads_clip_scale": tiny_config(n_heads=12, attn_config={"clip_qkv": 0.6, "softmax_scale": 0.35}),
}
PAD = 0


def head_tensors(cls_name: str, cfg: dict, g: torch.Generator) -> dict:
    d = cfg["d_model"]
    if cls_name == "MptForSequenceClassification":
        return {"score.weight": torch.randn(3, d, generator=g) * 0.2}
    if cls_name == "MptForTokenClassification":
        return {"classifier.weight": torch.randn(3, d, generator=g) * 0.2, "classifier.bias": torch.randn(3, generator=g)}
    if cls_name == "MptForQuestionAnswering":
        return {"qa_outputs.weight": torch.randn(2, d, generator=g) * 0.2, "qa_outputs.bias": torch.randn(2, generator=g)}
    return {}


@pytest.fixture(scope="module", params=list(CONFIGS))
def setup(request, tmp_path_factory):
    cfg = dict(CONFIGS[request.param], pad_token_id=PAD, num_labels=3)
    state = random_state(cfg, seed=1)
    g = torch.Generator().manual_seed(2)
    out = {}
    for name in HEADS:
        full = dict(state, **head_tensors(name, cfg, g))
        folder = tmp_path_factory.mktemp(name)
        write_single_safetensors(folder, cfg, full)
        ours = getattr(mpt_lite, name).from_pretrained(folder)
        theirs, missing = load_hf(name, full, cfg)
        assert not missing, missing
        out[name] = (ours, theirs)
    return cfg, out


def batch(vocab: int, lengths=(9, 6, 4), side: str = "right"):
    g = torch.Generator().manual_seed(3)
    t = max(lengths)
    ids = torch.randint(1, vocab, (len(lengths), t), generator=g)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        sl = slice(0, n) if side == "right" else slice(t - n, t)
        mask[i, sl] = 1
    ids = ids.masked_fill(mask == 0, PAD)
    return ids, mask


def close(a, b, what):
    diff = (a - b).abs().max().item()
    assert diff <= TOL, f"{what}: max abs difference {diff:.2e}"


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("head", HEADS)
def test_head_matches_transformers(setup, head, side):
    cfg, models = setup
    ours, theirs = models[head]
    ids, mask = batch(cfg["vocab_size"], side=side)
    kw = {}
    labels = None
    if head == "MptForCausalLM":
        labels = ids.masked_fill(mask == 0, -100)
        kw = {"labels": labels}
    elif head == "MptForSequenceClassification":
        kw = {"labels": torch.tensor([0, 2, 1])}
    elif head == "MptForTokenClassification":
        kw = {"labels": torch.randint(0, 3, ids.shape, generator=torch.Generator().manual_seed(5))}
    elif head == "MptForQuestionAnswering":
        kw = {"start_positions": torch.tensor([1, 2, 30]), "end_positions": torch.tensor([3, 4, 5])}
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kw)
        b = theirs(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kw)
    if head == "MptModel":
        close(a.last_hidden_state, b.last_hidden_state, "last_hidden_state")
    elif head == "MptForQuestionAnswering":
        close(a.start_logits, b.start_logits, "start_logits")
        close(a.end_logits, b.end_logits, "end_logits")
    else:
        assert a.logits.shape == b.logits.shape
        close(a.logits, b.logits, "logits")
    if head != "MptModel":
        close(a.loss, b.loss, "loss")
    assert len(a.hidden_states) == len(b.hidden_states) == cfg["n_layers"] + 1
    for i, (x, y) in enumerate(zip(a.hidden_states, b.hidden_states)):
        close(x, y, f"hidden_states[{i}]")


def test_inputs_embeds_matches_transformers(setup):
    cfg, models = setup
    ours, theirs = models["MptForCausalLM"]
    emb = torch.randn(2, 7, cfg["d_model"], generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        close(ours(inputs_embeds=emb).logits, theirs(inputs_embeds=emb).logits, "logits from inputs_embeds")


@pytest.mark.parametrize("side", ["right", "left"])
def test_incremental_decoding_equals_full_forward(setup, side):
    cfg, models = setup
    ours, theirs = models["MptForCausalLM"]
    ids, mask = batch(cfg["vocab_size"], lengths=(10, 7, 10), side=side)
    if side == "right":  # decoding continues after the last real token; make every row full-length
        mask = torch.ones_like(mask)
    with torch.no_grad():
        full = theirs(input_ids=ids, attention_mask=mask).logits
        out = ours(input_ids=ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
        # padding positions attend uniformly to every key (as in transformers), so only real tokens compare
        real = mask[:, :5].bool()
        close(out.logits[real], full[:, :5][real], "prefill logits")
        past = out.past_key_values
        for t in range(5, 10):
            step = ours(input_ids=ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=past, use_cache=True)
            close(step.logits[:, 0], full[:, t], f"step {t}")
            past = step.past_key_values
        assert past.get_seq_length() == 10


def test_cache_is_not_mutated_and_can_branch(setup):
    cfg, models = setup
    ours, _ = models["MptForCausalLM"]
    ids = torch.randint(1, cfg["vocab_size"], (1, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        past = ours(input_ids=ids[:, :6], use_cache=True).past_key_values
        a = ours(input_ids=ids[:, 6:7], past_key_values=past).logits
        ours(input_ids=ids[:, 7:8], past_key_values=past)  # another branch from the same prefix
        b = ours(input_ids=ids[:, 6:7], past_key_values=past).logits
    assert past.get_seq_length() == 6
    assert torch.equal(a, b)


def test_legacy_tuple_cache_accepted(setup):
    cfg, models = setup
    ours, theirs = models["MptForCausalLM"]
    ids = torch.randint(1, cfg["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        past = ours(input_ids=ids[:, :5], use_cache=True).past_key_values.to_legacy_cache()
        step = ours(input_ids=ids[:, 5:], past_key_values=past).logits
        close(step[:, 0], theirs(input_ids=ids).logits[:, 5], "step after a legacy-tuple cache")


def test_logits_to_keep(setup):
    cfg, models = setup
    ours, theirs = models["MptForCausalLM"]
    ids, mask = batch(cfg["vocab_size"])
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask, logits_to_keep=2).logits
        b = theirs(input_ids=ids, attention_mask=mask, logits_to_keep=2).logits
    assert a.shape == b.shape == (3, 2, cfg["vocab_size"])
    close(a, b, "logits_to_keep=2")


def test_sequence_classification_pad_rule(setup):
    cfg, models = setup
    ours, _ = models["MptForSequenceClassification"]
    ours.config.pad_token_id = None
    try:
        ids, mask = batch(cfg["vocab_size"])
        with pytest.raises(ValueError, match="padding token"):
            ours(input_ids=ids, attention_mask=mask)
        with torch.no_grad():
            assert ours(input_ids=ids[:1]).logits.shape == (1, 3)
    finally:
        ours.config.pad_token_id = PAD


def test_output_tuple_and_dict_access(setup):
    cfg, models = setup
    ours, _ = models["MptForCausalLM"]
    ids, _ = batch(cfg["vocab_size"])
    with torch.no_grad():
        out = ours(input_ids=ids, use_cache=True)
    assert out[0] is out.logits and out["logits"] is out.logits
    assert out.loss is None and "loss" not in out
    assert len(out.past_key_values) == cfg["n_layers"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_long_prompts_through_the_fused_attention_match_transformers(setup, side):
    """From layers.SDPA_MIN_QUERIES queries on, attention runs through torch's fused kernel with the
    ALiBi bias and the padding folded into one additive mask: the oracle still agrees (padded
    positions, which average every value in both, included)."""
    from mpt_lite.model import layers
    cfg, models = setup
    ours, theirs = models["MptForCausalLM"]
    n = min(cfg["max_seq_len"], layers.SDPA_MIN_QUERIES + 9)
    assert n >= layers.SDPA_MIN_QUERIES
    ids, mask = batch(cfg["vocab_size"], lengths=(n, n - 30, n - 5), side=side)
    with torch.no_grad():
        close(ours(input_ids=ids, attention_mask=mask).logits, theirs(input_ids=ids, attention_mask=mask).logits,
              "logits")
