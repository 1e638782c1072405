"""The request fields chat apps send, through the openai client against a running server:
response_format (validated with jsonschema), n with a seed, logprobs (against the model's own
log-softmax), echo, max_completion_tokens, penalties, stream_options, user."""
import json

import jsonschema
import openai
import pytest
import torch

import mpt_lite
from mpt_lite.server import create_app, server_thread

pytest.importorskip("llguidance")

MODEL = "mpt-lite-fields"
CHAT = [{"role": "user", "content": "Describe a Python function as JSON."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "args": {"type": "integer", "minimum": 0, "maximum": 9},
        "kind": {"enum": ["function", "method"]},
        "pure": {"type": "boolean"},
    },
    "required": ["name", "args", "kind", "pure"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def model():
    return mpt_lite.load(bits=None)


@pytest.fixture(scope="module")
def oa(model):
    app = create_app(model, model_name=MODEL, num_blocks=512, max_num_seqs=16)
    with server_thread(app) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def test_json_schema_output_validates_for_20_sampled_requests(oa):
    fmt = {"type": "json_schema", "json_schema": {"name": "fn", "schema": SCHEMA, "strict": True}}
    for seed in range(20):
        r = oa.chat.completions.create(model=MODEL, messages=CHAT, temperature=1.0, seed=seed, max_tokens=60,
                                       response_format=fmt, user="tester")
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_json_object_and_streamed_schema(oa):
    r = oa.completions.create(model=MODEL, prompt="config = ", max_tokens=40, temperature=0,
                              extra_body={"response_format": {"type": "json_object"}})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].text), dict)
    else:
        assert r.choices[0].finish_reason == "length" and r.choices[0].text.startswith("{")
    fmt = {"type": "json_schema", "json_schema": {"name": "fn", "schema": SCHEMA}}
    chunks = list(oa.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=60, temperature=0.8, seed=4,
                                             response_format=fmt, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(text), SCHEMA)


def test_invalid_schema_is_a_400_naming_it(oa):
    with pytest.raises(openai.BadRequestError, match="response_format.*minimum"):
        oa.chat.completions.create(model=MODEL, messages=CHAT, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": "a"}}})


def test_n_choices_with_a_seed_are_reproducible(oa):
    def ask(**kw):
        r = oa.chat.completions.create(model=MODEL, messages=CHAT, n=3, seed=11, temperature=1.0, max_tokens=12, **kw)
        assert [c.index for c in r.choices] == [0, 1, 2]
        return [c.message.content for c in r.choices], r.usage

    first, usage = ask()
    again, _ = ask()
    assert first == again and len(set(first)) > 1
    assert usage.completion_tokens <= 3 * 12
    streamed = ["", "", ""]
    for c in oa.chat.completions.create(model=MODEL, messages=CHAT, n=3, seed=11, temperature=1.0, max_tokens=12,
                                        stream=True, stream_options={"include_usage": True}):
        for ch in c.choices:
            streamed[ch.index] += ch.delta.content or ""
        if not c.choices:
            assert c.usage.completion_tokens == usage.completion_tokens
    assert streamed == first


def test_chat_logprobs_are_the_models_log_softmax(oa, model):
    prompt_ids = model.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    r = oa.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0, logprobs=True,
                                   top_logprobs=3)
    content = r.choices[0].logprobs.content
    ids = model.generate(torch.tensor([prompt_ids]), max_new_tokens=8)[0].tolist()  # greedy: the same tokens
    out = ids[len(prompt_ids):]
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    assert len(content) == len(out) == r.usage.completion_tokens
    assert b"".join(bytes(e.bytes) for e in content).decode() == r.choices[0].message.content
    for j, e in enumerate(content):
        row = ref[len(prompt_ids) - 1 + j]
        assert e.logprob == pytest.approx(row[out[j]].item(), abs=1e-3)
        top = row.topk(3)
        assert [t.logprob for t in e.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-3)
        assert [t.token for t in e.top_logprobs] == [model.tokenizer.decode([i]) for i in top.indices.tolist()]
        assert e.token == e.top_logprobs[0].token  # greedy


def test_completion_logprobs_echo_and_limits(oa, model):
    prompt = "def add(a, b):"
    r = oa.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    lp, text = r.choices[0].logprobs, r.choices[0].text
    assert "".join(lp.tokens) == text and len(lp.token_logprobs) == 6
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    assert all(len(d) == 2 and max(d.values()) >= lp.token_logprobs[i] - 1e-6 for i, d in enumerate(lp.top_logprobs))
    echoed = oa.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == prompt + text
    limited = oa.completions.create(model=MODEL, prompt=prompt, temperature=0,
                                    extra_body={"max_completion_tokens": 3})
    assert limited.usage.completion_tokens == 3 and limited.choices[0].finish_reason == "length"


def test_penalties_change_sampling_and_stop_lists(oa, model):
    base = dict(model=MODEL, prompt="x = [", max_tokens=24, temperature=0)
    plain = oa.completions.create(**base).choices[0].text
    penalised = oa.completions.create(**base, frequency_penalty=2.0, presence_penalty=2.0).choices[0].text
    assert penalised != plain
    stopped = oa.completions.create(**base, stop=[",", "]"]).choices[0]
    assert "," not in stopped.text and "]" not in stopped.text


def test_streamed_logprobs_cover_the_streamed_text(oa):
    chunks = list(oa.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10, temperature=0,
                                             logprobs=True, top_logprobs=1, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert b"".join(bytes(e.bytes) for e in entries).decode() == text
    assert all(len(e.top_logprobs) == 1 for e in entries)
