"""from_pretrained / load keyword arguments that are not MPT config fields: transformers' torch_dtype is honoured
(as dtype), bitsandbytes-style quantization flags are refused with mpt_lite's spelling, trust_remote_code is
dropped, and any other unknown name warns (it is still kept on the config, as a hub config's own fields are)."""
import warnings

import pytest
import torch

import mpt_lite
from checkpoints import random_state, tiny_config, write_config, write_single_safetensors


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_config()
    write_single_safetensors(d, cfg, random_state(cfg))  # config.json says torch_dtype "bfloat16", as mpt-7b's
    return d


def dtypes(model) -> set:
    return {p.dtype for p in model.parameters()}


@pytest.mark.parametrize("torch_dtype", [torch.bfloat16, "bfloat16", "torch.bfloat16", "auto"])
def test_torch_dtype_sets_the_dtype(folder, torch_dtype):
    want = mpt_lite.MptForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    got = mpt_lite.MptForCausalLM.from_pretrained(folder, torch_dtype=torch_dtype)
    assert dtypes(got) == dtypes(want) == {torch.bfloat16}
    for (name, a), (_, b) in zip(want.state_dict().items(), got.state_dict().items()):
        assert torch.equal(a, b), name
    assert not hasattr(got.config, "torch_dtype") or got.config.torch_dtype == "bfloat16"  # the file's field, kept


def test_torch_dtype_auto_without_a_stored_dtype_is_float32(tmp_path):
    cfg = tiny_config()
    write_single_safetensors(tmp_path, cfg, random_state(cfg))
    write_config(tmp_path, cfg, {"torch_dtype": None})
    assert dtypes(mpt_lite.MptForCausalLM.from_pretrained(tmp_path, torch_dtype="auto")) == {torch.float32}


def test_torch_dtype_through_load_and_with_bits(folder):
    m = mpt_lite.load(folder, bits=8, torch_dtype=torch.float16)
    assert torch.float16 in dtypes(m)  # the norms (the quantized matrices keep their codes)


def test_dtype_and_torch_dtype_that_disagree_are_refused(folder):
    with pytest.raises(ValueError, match="both dtype"):
        mpt_lite.MptForCausalLM.from_pretrained(folder, dtype=torch.float16, torch_dtype=torch.bfloat16)


@pytest.mark.parametrize("bad", ["int8", 3, torch.int8])
def test_bad_torch_dtype(folder, bad):
    with pytest.raises(TypeError, match="dtype"):
        mpt_lite.MptForCausalLM.from_pretrained(folder, torch_dtype=bad)


@pytest.mark.parametrize("name, ours", [("load_in_4bit", "bits=4"), ("load_in_8bit", "bits=8"),
                                        ("quantization_config", "bits="), ("bnb_4bit_quant_type", "quant_type")])
def test_bitsandbytes_flags_name_the_option_to_use(folder, name, ours):
    with pytest.raises(TypeError, match=ours):
        mpt_lite.load(folder, **{name: True})


@pytest.mark.parametrize("entry", ["load", "from_pretrained"])
def test_a_misspelt_option_warns_at_the_callers_line_and_names_the_likely_one(folder, entry):
    call = mpt_lite.load if entry == "load" else mpt_lite.MptForCausalLM.from_pretrained
    with pytest.warns(UserWarning, match="'bitz'.*did you mean bits") as record:
        m = call(folder, bitz=8)
    assert m.config.bitz == 8  # kept, as before
    assert [w.filename for w in record if "bitz" in str(w.message)] == [__file__]


def test_config_fields_and_trust_remote_code_do_not_warn(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = mpt_lite.MptForCausalLM.from_pretrained(folder, max_seq_len=96, hidden_size=48, trust_remote_code=True,
                                                    num_labels=3)
    assert m.config.max_seq_len == 96 and not hasattr(m.config, "trust_remote_code")
