"""MptConfig against transformers' MptConfig (the contract) and its own round trips and errors."""
import json

import pytest

import mpt_lite
from mpt_lite import MptConfig

FIELDS = ["d_model", "n_heads", "n_layers", "expansion_ratio", "max_seq_len", "vocab_size", "resid_pdrop",
          "layer_norm_epsilon", "emb_pdrop", "learned_pos_emb", "init_device", "logit_scale", "no_bias",
          "embedding_fraction", "norm_type", "use_cache", "initializer_range", "pad_token_id", "bos_token_id",
          "eos_token_id", "num_labels"]
ATTN_FIELDS = ["attn_type", "attn_pdrop", "attn_impl", "clip_qkv", "qk_ln", "softmax_scale", "prefix_lm",
               "attn_uses_sequence_id", "alibi", "alibi_bias_max"]


def test_defaults_equal_transformers():
    import transformers

    ours, theirs = MptConfig(), transformers.MptConfig()
    for f in FIELDS:
        assert getattr(ours, f) == getattr(theirs, f), f
    for f in ATTN_FIELDS:
        assert ours.attn_config[f] == getattr(theirs.attn_config, f), f
    assert ours.verbose == 0


def test_aliases_and_attribute_access():
    c = MptConfig(hidden_size=64, num_attention_heads=8, num_hidden_layers=3, attn_config={"alibi_bias_max": 16})
    assert (c.d_model, c.n_heads, c.n_layers) == (64, 8, 3)
    assert (c.hidden_size, c.num_attention_heads, c.num_hidden_layers) == (64, 8, 3)
    assert c.attn_config.alibi_bias_max == 16 and c.attn_config["alibi"] is True
    with pytest.raises(ValueError, match="hidden_size"):
        MptConfig(hidden_size=64, d_model=32, n_heads=4)


def test_attn_config_from_transformers_object():
    import transformers

    hf = transformers.MptConfig(attn_config={"clip_qkv": 6.0, "qk_ln": True})
    c = MptConfig(attn_config=hf.attn_config)
    assert c.attn_config.clip_qkv == 6.0 and c.attn_config.qk_ln is True
    assert "return_dict" not in c.attn_config  # transformers' machinery is not carried over


def test_round_trip_keeps_unknown_fields(tmp_path):
    c = MptConfig(d_model=64, n_heads=4, n_layers=2, vocab_size=100, num_labels=3,
                  auto_map={"AutoConfig": "configuration_mpt.MPTConfig"}, tokenizer_name="EleutherAI/gpt-neox-20b")
    c.save_pretrained(tmp_path)
    d = MptConfig.from_pretrained(tmp_path)
    assert d == c and d.to_dict() == c.to_dict()
    assert d.num_labels == 3 and d.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert d.tokenizer_name == "EleutherAI/gpt-neox-20b"
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mpt"


def test_transformers_can_read_our_config(tmp_path):
    import transformers

    MptConfig(d_model=64, n_heads=4, n_layers=2, vocab_size=100, attn_config={"clip_qkv": 3.0}).save_pretrained(tmp_path)
    hf = transformers.MptConfig.from_pretrained(tmp_path)
    assert hf.d_model == 64 and hf.attn_config.clip_qkv == 3.0


@pytest.mark.parametrize("kw,field", [
    ({"d_model": 50, "n_heads": 4}, "d_model"),
    ({"n_layers": -1}, "n_layers"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"max_seq_len": "long"}, "max_seq_len"),
    ({"expansion_ratio": -2}, "expansion_ratio"),
    ({"logit_scale": "huge"}, "logit_scale"),
    ({"norm_type": "batchnorm"}, "norm_type"),
    ({"attn_config": {"attn_type": "sparse"}}, "attn_type"),
    ({"attn_config": {"attn_type": "grouped_query_attention", "kv_n_heads": 3}}, "kv_n_heads"),
    ({"attn_config": {"clip_qkv": -1}}, "clip_qkv"),
    ({"attn_config": {"alibi_bias_max": 0}}, "alibi_bias_max"),
])
def test_nonsensical_fields_name_themselves(kw, field):
    with pytest.raises(ValueError, match=field):
        MptConfig(**kw)


def test_config_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        MptConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        MptConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 64, "n_heads": 4, "vocab_size": 10}))
    with pytest.raises(KeyError, match="n_layers"):
        MptConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 64, "n_heads": 5, "n_layers": 1, "vocab_size": 10}))
    with pytest.raises(ValueError, match="d_model"):
        MptConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "d_model": 64, "n_heads": 4,
                                                      "n_layers": 1, "vocab_size": 10}))
    with pytest.raises(ValueError, match="llama"):
        MptConfig.from_pretrained(tmp_path)


def test_config_overrides_from_pretrained(tmp_path):
    MptConfig(d_model=64, n_heads=4, n_layers=2, vocab_size=100).save_pretrained(tmp_path)
    c = MptConfig.from_pretrained(tmp_path, max_seq_len=83968, attn_config={"clip_qkv": 2.0})
    assert c.max_seq_len == 83968 and c.attn_config.clip_qkv == 2.0 and c.attn_config.alibi is True


def test_signature_defaults_and_to_dict_equal_transformers():
    """inspect.signature shows the seed doc's arguments with transformers' defaults, and to_dict() holds the same
    values under the same keys (int label keys in memory, as transformers)."""
    import inspect

    import transformers

    ours, theirs = inspect.signature(MptConfig).parameters, inspect.signature(transformers.MptConfig).parameters
    for f in FIELDS[:-4]:
        assert ours[f].default == theirs[f].default, f
    assert ours["verbose"].default == 0 and ours["attn_config"].default is None
    a, b = MptConfig().to_dict(), transformers.MptConfig().to_dict()
    for key in set(a) & set(b) - {"attn_config", "model_type"}:
        assert a[key] == b[key], key
    assert {k: a["attn_config"][k] for k in ATTN_FIELDS} == {k: b["attn_config"][k] for k in ATTN_FIELDS}
    assert set(a["attn_config"]) == set(ATTN_FIELDS)  # kv_n_heads only when a file or caller sets it
    assert MptConfig(attn_config={"kv_n_heads": 2}).to_dict()["attn_config"]["kv_n_heads"] == 2


def test_num_labels_replaces_the_label_map_as_in_transformers(tmp_path):
    import transformers

    ours = MptConfig(id2label={0: "neg", 1: "pos"}, num_labels=3)
    theirs = transformers.MptConfig(id2label={0: "neg", 1: "pos"}, num_labels=3)
    assert ours.num_labels == theirs.num_labels == 3 and ours.id2label == theirs.id2label
    assert ours.label2id == theirs.label2id
    MptConfig(d_model=64, n_heads=4, n_layers=2, vocab_size=100, id2label={0: "neg", 1: "pos"}).save_pretrained(tmp_path)
    for n in (3, 2, 1):
        c, h = MptConfig.from_pretrained(tmp_path, num_labels=n), transformers.MptConfig.from_pretrained(tmp_path, num_labels=n)
        assert c.num_labels == h.num_labels == n and c.id2label == h.id2label, n
    head = mpt_lite.MptForSequenceClassification.from_pretrained(mpt_lite.default_model_path(), num_labels=3)
    assert head.config.num_labels == 3 and head.score.weight.shape[0] == 3
    loaded = mpt_lite.load(task="sequence-classification", num_labels=4)
    assert loaded.config.num_labels == 4 and loaded.score.weight.shape[0] == 4


def test_an_override_by_alias_replaces_the_files_field(tmp_path):
    import transformers

    MptConfig(d_model=64, n_heads=4, n_layers=2, vocab_size=100).save_pretrained(tmp_path)
    c = MptConfig.from_pretrained(tmp_path, hidden_size=128, num_hidden_layers=3)
    h = transformers.MptConfig.from_pretrained(tmp_path, hidden_size=128, num_hidden_layers=3)
    assert (c.d_model, c.n_layers) == (h.d_model, h.n_layers) == (128, 3)


def test_random_init_models_build():
    c = MptConfig(d_model=32, n_heads=4, n_layers=1, vocab_size=50, max_seq_len=16)
    for cls in (mpt_lite.MptModel, mpt_lite.MptForCausalLM, mpt_lite.MptForSequenceClassification,
                mpt_lite.MptForTokenClassification, mpt_lite.MptForQuestionAnswering):
        m = cls(c)
        assert m.config is c
        assert all(p.isfinite().all() for p in m.parameters())
