"""Chat templates (ChatML, as mpt-7b-chat / mpt-30b-chat use) against transformers'
apply_chat_template, and model.chat on the embedded model."""
import json

import pytest
import torch

import mpt_lite
from mpt_lite import MptConfig, MptForCausalLM, MptTokenizer
from mpt_lite.text.chat_template import CHATML_TEMPLATE, render_chat

FOLDER = mpt_lite.default_model_path()
CONVERSATIONS = [
    [{"role": "user", "content": "Write a function that adds two numbers."}],
    [{"role": "system", "content": "- You are a helpful assistant chatbot trained by MosaicML.\n- You answer questions."},
     {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello. How can I help?"},
     {"role": "user", "content": "Tell me a joke about {{ braces }} and 'quotes'."}],
]


@pytest.fixture(scope="module")
def tok():
    return MptTokenizer.from_pretrained(FOLDER)


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("jinja2")
    cfg = json.loads((FOLDER / "tokenizer_config.json").read_text())
    t = transformers.PreTrainedTokenizerFast(tokenizer_file=str(FOLDER / "tokenizer.json"),
                                             eos_token=cfg["eos_token"], bos_token=cfg["bos_token"])
    t.chat_template = cfg["chat_template"]
    return t


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("gen_prompt", [True, False])
def test_template_matches_transformers(tok, hf, conv, gen_prompt):
    ours = tok.apply_chat_template(conv, add_generation_prompt=gen_prompt)
    theirs = hf.apply_chat_template(conv, add_generation_prompt=gen_prompt, tokenize=False)
    assert ours == theirs
    ids = tok.apply_chat_template(conv, add_generation_prompt=gen_prompt, tokenize=True)
    assert ids == hf.apply_chat_template(conv, add_generation_prompt=gen_prompt, tokenize=True, return_dict=False)


def test_chatml_literal_format(tok):
    """The format of the mpt-7b-chat model card, written out by hand."""
    conv = CONVERSATIONS[1]
    expected = ("<|im_start|>system\n" + conv[0]["content"] + "<|im_end|>\n"
                "<|im_start|>user\nHi!<|im_end|>\n"
                "<|im_start|>assistant\nHello. How can I help?<|im_end|>\n"
                "<|im_start|>user\n" + conv[3]["content"] + "<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert tok.apply_chat_template(conv) == expected


def test_builtin_chatml_without_a_template(tok):
    bare = MptTokenizer(tok._tok, {k: v for k, v in tok.config.items() if k != "chat_template"})
    conv = CONVERSATIONS[1]
    assert bare.chat_template is None
    assert bare.apply_chat_template(conv) == tok.apply_chat_template(conv)


def test_checkpoint_template_wins_and_errors_are_clear(tok):
    custom = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    assert render_chat(tok, CONVERSATIONS[0], chat_template=custom) == "[user] " + CONVERSATIONS[0][0]["content"] + "\n"
    refusing = "{{ raise_exception('only user turns') }}"
    with pytest.raises(ValueError, match="only user turns"):
        render_chat(tok, CONVERSATIONS[0], chat_template=refusing)
    with pytest.raises(ValueError):
        render_chat(tok, [])
    with pytest.raises(TypeError):
        render_chat(tok, "hello")
    with pytest.raises(ValueError):
        render_chat(tok, [{"content": "no role"}])


def test_chat_on_the_default_model_stream_equals_full():
    model = mpt_lite.load(bits=None)
    conv = [{"role": "user", "content": "def add(a, b):"}]
    full = model.chat(conv, max_new_tokens=24)
    pieces = list(model.chat(conv, stream=True, max_new_tokens=24))
    assert isinstance(full, str) and "".join(pieces) == full
    assert "<|im_end|>" not in full and "<|im_start|>" not in full


def test_chat_stops_at_im_end_token(tok):
    """A model whose every next token is <|im_end|> (final norm bias along that token's embedding
    row, norm weight zero): chat returns an empty reply after one step, generate goes on."""
    n = len(tok)
    config = MptConfig(d_model=16, n_heads=2, n_layers=1, max_seq_len=256, vocab_size=n + 30, no_bias=False)
    torch.manual_seed(0)
    model = MptForCausalLM(config).eval()
    im_end = tok.token_to_id("<|im_end|>")
    with torch.no_grad():
        direction = torch.zeros(16)
        direction[3] = 1.0
        model.transformer.wte.weight[:, 3] = 0.0
        model.transformer.wte.weight[im_end] = 10 * direction
        model.transformer.norm_f.weight.zero_()
        model.transformer.norm_f.bias.copy_(direction)
    model.tokenizer = tok
    prompt = tok.apply_chat_template(CONVERSATIONS[0])
    ids = torch.tensor([tok.encode(prompt)])
    out = model.generate(ids, max_new_tokens=5, eos_token_id=-1)
    assert out[0, ids.shape[1]:].tolist() == [im_end] * 5
    calls = []
    hook = model.transformer.norm_f.register_forward_hook(lambda *a: calls.append(1))  # once per model step
    assert model.chat(CONVERSATIONS[0], max_new_tokens=5) == ""
    hook.remove()
    assert len(calls) == 1  # stopped at the first <|im_end|>
    assert list(model.chat(CONVERSATIONS[0], stream=True, max_new_tokens=5)) == []


def test_chat_checks_stop_like_generate():
    model = mpt_lite.load(bits=None)
    conv = [{"role": "user", "content": "hi"}]
    for bad, error, words in ((5, TypeError, "stop must be a string"), (b"x", TypeError, "stop must be a string"),
                              (["a", 5], TypeError, r"stop\[1\]"), ("", ValueError, "stop strings must not be empty")):
        with pytest.raises(error, match=words):
            model.chat(conv, max_new_tokens=2, stop=bad)
    assert model.chat(conv, max_new_tokens=8, stop=("zzz",)) == model.chat(conv, max_new_tokens=8)
