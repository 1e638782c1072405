"""Bad input gets a clear Python exception naming the problem."""
import pytest
import torch

import mpt_lite
from checkpoints import random_state, tiny_config, write_safetensors_shards, write_single_safetensors

CFG = tiny_config()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m")
    write_single_safetensors(folder, CFG, random_state(CFG, seed=3))
    return mpt_lite.MptForCausalLM.from_pretrained(folder)


def test_token_id_out_of_range(model):
    with pytest.raises(IndexError, match=f"token id {CFG['vocab_size']} .*vocabulary of {CFG['vocab_size']}"):
        model(input_ids=torch.tensor([[1, CFG["vocab_size"]]]))
    with pytest.raises(IndexError, match="-1"):
        model(input_ids=torch.tensor([[-1, 2]]))


def test_float_input_ids(model):
    with pytest.raises(TypeError, match="integer token ids"):
        model(input_ids=torch.tensor([[1.0, 2.0]]))
    for dtype in (torch.uint8, torch.int16, torch.bool):  # ids torch's embedding lookup does not take
        with pytest.raises(TypeError, match="integer token ids"):
            model(input_ids=torch.tensor([[1, 0]], dtype=dtype))
    assert torch.equal(model(input_ids=torch.tensor([[1, 2]], dtype=torch.int32)).logits,
                       model(input_ids=torch.tensor([[1, 2]])).logits)


def test_bad_logits_to_keep(model):
    ids = torch.tensor([[1, 2, 3]])
    for bad in (1.5, "1", None, True):
        with pytest.raises(TypeError, match="logits_to_keep"):
            model(input_ids=ids, logits_to_keep=bad)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(input_ids=ids, logits_to_keep=-1)


def test_wrong_shapes(model):
    with pytest.raises(ValueError, match="batch, tokens"):
        model(input_ids=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="empty"):
        model(input_ids=torch.zeros((1, 0), dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(input_ids=torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="inputs_embeds"):
        model(inputs_embeds=torch.zeros(1, 3, CFG["d_model"] + 1))
    with pytest.raises(TypeError, match="input_ids"):
        model(input_ids=[[1, 2]])


def test_bad_labels(model):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="labels"):
        model(input_ids=ids, labels=torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="labels"):
        model(input_ids=ids, labels=torch.tensor([[1.0, 2.0, 3.0]]))


def test_bad_answer_positions():
    qa = mpt_lite.MptForQuestionAnswering(mpt_lite.MptConfig(d_model=32, n_heads=2, n_layers=1, vocab_size=50)).eval()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    good = torch.tensor([0, 1])
    for bad in (torch.tensor([0.0, 1.0]), torch.tensor([True, False])):
        with pytest.raises(TypeError, match="start_positions must hold integer"):
            qa(input_ids=ids, start_positions=bad, end_positions=good)
        with pytest.raises(TypeError, match="end_positions must hold integer"):
            qa(input_ids=ids, start_positions=good, end_positions=bad)
    with pytest.raises(TypeError, match="start_positions"):
        qa(input_ids=ids, start_positions="0", end_positions=good)
    for bad in (torch.tensor([0, 1, 2]), torch.tensor(0), torch.tensor([[0, 1]])):
        with pytest.raises(ValueError, match=r"start_positions must have shape \(2,\)"):
            qa(input_ids=ids, start_positions=bad, end_positions=good)
    loss = qa(input_ids=ids, start_positions=good, end_positions=good).loss  # as before: (batch,), (batch, 1), lists
    assert torch.equal(qa(input_ids=ids, start_positions=good[:, None], end_positions=[0, 1]).loss, loss)


def test_bad_cache(model):
    with pytest.raises(TypeError, match="past_key_values"):
        model(input_ids=torch.tensor([[1]]), past_key_values="yes")
    past = model(input_ids=torch.tensor([[1, 2], [3, 4]]), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="batch"):
        model(input_ids=torch.tensor([[1]]), past_key_values=past)
    heads, dim, layers = CFG["n_heads"], CFG["d_model"] // CFG["n_heads"], CFG["n_layers"]
    ids = torch.tensor([[1]])
    for k_shape, v_shape in (((1, heads, 3, dim + 1),) * 2, ((1, heads + 1, 3, dim),) * 2,
                             ((1, heads, 3, dim), (1, heads, 2, dim)), ((1, heads, 3),) * 2):
        bad = [(torch.zeros(k_shape), torch.zeros(v_shape))] * layers
        with pytest.raises(ValueError, match=r"past_key_values(\[0\]| layer 0)"):
            model(input_ids=ids, past_key_values=bad)
    with pytest.raises(TypeError, match="float tensor"):
        model(input_ids=ids, past_key_values=[(torch.zeros(1, heads, 3, dim, dtype=torch.long),) * 2] * layers)


def test_unknown_arguments(model):
    with pytest.raises(TypeError, match="start_positions"):
        model(input_ids=torch.tensor([[1]]), start_positions=torch.tensor([0]))


def test_context_too_long(model):
    with pytest.raises(ValueError, match="max_seq_len"):
        model(input_ids=torch.ones((1, CFG["max_seq_len"] + 1), dtype=torch.long))


def test_bad_load_arguments(tmp_path):
    write_single_safetensors(tmp_path, CFG, random_state(CFG, seed=3))
    with pytest.raises(ValueError, match="task"):
        mpt_lite.load(tmp_path, task="translation", bits=None)
    with pytest.raises(ValueError, match="bits"):
        mpt_lite.MptForCausalLM.from_pretrained(tmp_path, bits=3)
    with pytest.raises(TypeError, match="dtype"):
        mpt_lite.MptForCausalLM.from_pretrained(tmp_path, dtype=torch.int8)
    with pytest.raises(ValueError, match="device"):
        mpt_lite.MptForCausalLM.from_pretrained(tmp_path, device="tpu")
    with pytest.raises(TypeError, match="model name"):
        mpt_lite.MptForCausalLM.from_pretrained(42)


def test_json_files_that_are_not_utf8_or_not_objects(tmp_path):
    """A config.json, shard index or tokenizer_config.json that is binary (not UTF-8) or not a JSON
    object: an error that names the file, not a bare UnicodeDecodeError/TypeError."""
    state = random_state(CFG, seed=3)
    binary = b"\xff\xfe\x00garbage"
    write_single_safetensors(tmp_path / "cfg", CFG, state)
    (tmp_path / "cfg" / "config.json").write_bytes(binary)
    for call in (lambda: mpt_lite.load(tmp_path / "cfg"), lambda: mpt_lite.MptConfig.from_pretrained(tmp_path / "cfg")):
        with pytest.raises(ValueError, match="cfg/config.json is not valid JSON"):
            call()
    write_safetensors_shards(tmp_path / "idx", CFG, state)
    (tmp_path / "idx" / "model.safetensors.index.json").write_bytes(binary)
    with pytest.raises(OSError, match="model.safetensors.index.json is not a valid shard index"):
        mpt_lite.load(tmp_path / "idx", bits=None)
    write_single_safetensors(tmp_path / "tok", CFG, state)
    (tmp_path / "tok" / "tokenizer.json").write_bytes((mpt_lite.default_model_path() / "tokenizer.json").read_bytes())
    for text in (binary, b"[1, 2]"):
        (tmp_path / "tok" / "tokenizer_config.json").write_bytes(text)
        with pytest.raises(OSError, match="tokenizer_config.json"):
            mpt_lite.load(tmp_path / "tok", bits=None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    write_single_safetensors(tmp_path, CFG, random_state(CFG, seed=3))
    with pytest.raises(ValueError, match="cuda"):
        mpt_lite.MptForCausalLM.from_pretrained(tmp_path, device="cuda")
