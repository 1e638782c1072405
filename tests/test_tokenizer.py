"""MptTokenizer against the `tokenizers` library and transformers' PreTrainedTokenizerFast, both
reading the same tokenizer.json (the embedded default model's, a byte-level BPE like gpt-neox-20b's)."""
import json

import pytest
import torch

import mpt_lite
from mpt_lite import MptConfig, MptForCausalLM, MptTokenizer

FOLDER = mpt_lite.default_model_path()
TEXTS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "class Foo(object):\n\t\"\"\"Doc.\"\"\"\n    x = {'a': [1, 2.5e-3]}  # comment",
    "héllo wörld — ünïcode 日本語 🐍 emoji",
    "   leading spaces and trailing   \n\n\n",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "",
]


@pytest.fixture(scope="module")
def tok():
    return MptTokenizer.from_pretrained(FOLDER)


@pytest.fixture(scope="module")
def raw():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(FOLDER / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    cfg = json.loads((FOLDER / "tokenizer_config.json").read_text())
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(FOLDER / "tokenizer.json"), bos_token=cfg["bos_token"], eos_token=cfg["eos_token"],
        unk_token=cfg["unk_token"], pad_token=cfg["pad_token"],
        additional_special_tokens=cfg["additional_special_tokens"])


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_tokenizers_and_transformers(tok, raw, hf, text):
    ids = tok.encode(text)
    assert ids == raw.encode(text).ids
    assert ids == hf(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=False) == raw.decode(ids, skip_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=False) == text  # byte-level BPE is lossless
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)


def test_special_tokens(tok, hf):
    assert tok.eos_token == tok.bos_token == tok.unk_token == "<|endoftext|>"
    assert tok.eos_token_id == hf.eos_token_id == tok.bos_token_id
    assert tok.pad_token_id == hf.pad_token_id
    assert len(tok) == len(hf)
    for t in ("<|im_start|>", "<|im_end|>"):
        assert tok.token_to_id(t) == hf.convert_tokens_to_ids(t)
        assert tok.encode(t) == [tok.token_to_id(t)]  # one token, never split by BPE
    assert sorted(tok.all_special_ids) == sorted(hf.all_special_ids)


def test_batch_left_padding_matches_transformers(tok, hf):
    texts = ["x = 1", "def f(a, b):\n    return a + b", "import os"]
    ours = tok(texts)
    theirs = hf(texts, padding=True, padding_side="left", return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    right = tok(texts, padding_side="right")
    theirs_r = hf(texts, padding=True, padding_side="right", return_tensors="pt")
    assert torch.equal(right["input_ids"], theirs_r["input_ids"])
    assert torch.equal(right["attention_mask"], theirs_r["attention_mask"])


def test_ids_beyond_the_tokenizer_decode_to_nothing(tok, hf):
    n = len(tok)
    ids = tok.encode("return x") + [n, n + 5, n + 29]
    assert tok.decode(ids) == hf.decode(ids) == "return x"
    assert tok.batch_decode(torch.tensor([ids, ids])) == ["return x", "return x"]


def test_bad_input_is_a_clear_error(tok):
    with pytest.raises(TypeError):
        tok.encode(123)
    with pytest.raises(TypeError):
        tok(["ok", None])
    with pytest.raises(ValueError):
        tok.decode([1, -3])
    with pytest.raises(ValueError):
        tok(["a"], padding_side="middle")


def test_save_pretrained_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = MptTokenizer.from_pretrained(tmp_path)
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["eos_token"] == "<|endoftext|>"
    for text in TEXTS:
        assert again.encode(text) == tok.encode(text)
    assert again.chat_template == tok.chat_template


def test_generation_never_samples_rows_beyond_the_tokenizer(tok):
    """A padded vocabulary (real MPT: 50432 rows, 50277 tokens): here most rows have no token,
    and hot sampling would pick them nearly always if they were not masked."""
    n = len(tok)
    config = MptConfig(d_model=32, n_heads=2, n_layers=1, max_seq_len=64, vocab_size=n + 4 * n)
    torch.manual_seed(0)
    model = MptForCausalLM(config).eval()
    model.tokenizer = tok
    prompt = torch.tensor([tok.encode("def f(x):")])
    out = model.generate(prompt, max_new_tokens=40, do_sample=True, temperature=50.0, seed=1, eos_token_id=-1)
    new = out[0, prompt.shape[1]:]
    assert len(new) == 40 and int(new.max()) < n
