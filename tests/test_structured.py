"""Constrained decoding, the logprobs the engine records and OpenAI's penalties, on the embedded
default model. Oracles: jsonschema and re for the output, the torch model's own log-softmax for
logprobs, the penalty formula on a small tensor."""
import json
import re

import jsonschema
import pytest
import torch

import mpt_lite
from mpt_lite.runtime import Engine, SamplingParams
from mpt_lite.runtime.constraints import constraint_factory
from mpt_lite.runtime.sampler import apply_presence_frequency

pytest.importorskip("llguidance")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "count": {"type": "integer", "minimum": 0, "maximum": 999},
        "kind": {"enum": ["function", "class", "module"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
    },
    "required": ["name", "count", "kind", "tags"],
    "additionalProperties": False,
}
NUMBER = r"-?[0-9]{1,4}\.[0-9]{2}"


@pytest.fixture(scope="module")
def model():
    return mpt_lite.load(bits=None)


def run(model, reqs_spec):
    """Runs (prompt, max_new, params, constraint) specs in one engine; returns the requests."""
    engine = Engine(model, num_blocks=256, max_num_seqs=32)
    eos = model.config.eos_token_id
    reqs = [engine.add_request(model.tokenizer.encode(p), n, params=params, eos_token_id=eos, constraint=c)
            for p, n, params, c in reqs_spec]
    for _ in engine.run():
        pass
    return reqs


def text_of(model, req):
    return model.tokenizer.decode([t for t in req.output if t not in req.eos])


def test_schema_output_validates_when_sampled(model):
    make = constraint_factory(model.tokenizer, json_schema=SCHEMA)
    specs = [("def parse(", 80, SamplingParams(do_sample=True, temperature=1.0, seed=s), make()) for s in range(12)]
    reqs = run(model, specs)
    for r in reqs:
        assert r.finish_reason == "stop", (r.finish_reason, text_of(model, r))
        jsonschema.validate(json.loads(text_of(model, r)), SCHEMA)


def test_constrained_and_free_rows_share_a_batch(model):
    """A free row decodes exactly as it does alone (greedy) while constrained rows run beside it."""
    prompt = "import os\n"
    alone = run(model, [(prompt, 24, SamplingParams(), None)])[0].output
    make = constraint_factory(model.tokenizer, regex=NUMBER)
    reqs = run(model, [("x = ", 24, SamplingParams(), make()), (prompt, 24, SamplingParams(), None),
                       ("y = ", 24, SamplingParams(do_sample=True, seed=3), make())])
    assert reqs[1].output == alone
    for r in (reqs[0], reqs[2]):
        assert re.fullmatch(NUMBER, text_of(model, r)), text_of(model, r)


def test_generate_with_regex_grammar_and_schema(model):
    out = model.generate(["total = ", "def f():\n    return "], max_new_tokens=16, regex=NUMBER)
    assert all(re.fullmatch(NUMBER, o) for o in out), out
    lark = 'start: "def " NAME "(" NAME ")"\nNAME: /[a-z_]{1,8}/'
    out = model.generate("# helper\n", max_new_tokens=20, do_sample=True, seed=1, grammar=lark)
    assert re.fullmatch(r"def [a-z_]{1,8}\([a-z_]{1,8}\)", out), out
    out = model.generate("data = ", max_new_tokens=80, json_schema=json.dumps(SCHEMA))
    jsonschema.validate(json.loads(out), SCHEMA)
    pieces = list(model.generate("n = ", max_new_tokens=16, regex=NUMBER, stream=True))
    assert re.fullmatch(NUMBER, "".join(pieces))


def test_max_tokens_ends_with_length(model):
    make = constraint_factory(model.tokenizer, json_schema={"type": "object", "properties": {"s": {"type": "string"}},
                                                            "required": ["s"]})
    r = run(model, [("x = ", 4, SamplingParams(), make())])[0]
    assert r.finish_reason == "length" and len(r.output) == 4
    assert text_of(model, r).startswith('{"s":')


@pytest.mark.parametrize("kwargs,match", [
    ({"json_schema": {"type": "integr"}}, "json_schema.*type"),
    ({"json_schema": {"properties": {"a": {"minimum": "zero"}}}}, "json_schema.*minimum"),
    ({"json_schema": "{not json"}, "not valid JSON"),
    ({"json_schema": False}, "matches no value"),
    ({"regex": "([a-"}, "invalid regex"),
    ({"grammar": "start: foo"}, "invalid grammar.*foo"),
    ({"regex": "a", "json_schema": {}}, "at most one"),
])
def test_invalid_constraints_are_value_errors(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.generate("x", max_new_tokens=2, **kwargs)


def test_wrong_types_are_type_errors(model):
    with pytest.raises(TypeError, match="json_schema"):
        model.generate("x", max_new_tokens=2, json_schema=[1])
    with pytest.raises(TypeError, match="regex"):
        model.generate("x", max_new_tokens=2, regex="")


def test_logprobs_are_the_models_log_softmax(model):
    specs = [("def fib(n):", 10, SamplingParams(logprobs=4), None),
             ("class A:", 10, SamplingParams(do_sample=True, seed=5, logprobs=0), None)]
    for (prompt, _, _, _), r in zip(specs, run(model, specs)):
        assert len(r.logprobs) == len(r.output)
        ids = torch.tensor([r.tokens])
        with torch.no_grad():
            ref = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        n_prompt = len(r.prompt)
        for j, rec in enumerate(r.logprobs):
            row = ref[n_prompt - 1 + j]
            assert rec.token == r.output[j]
            assert rec.logprob == pytest.approx(row[rec.token].item(), abs=1e-3)
            k = r.params.logprobs
            assert [t for t, _ in rec.top] == row.topk(k).indices.tolist()
            assert [v for _, v in rec.top] == pytest.approx(row.topk(k).values.tolist(), abs=1e-3)


def test_presence_and_frequency_penalties():
    logits = torch.zeros(3, 6)
    params = [SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), SamplingParams(),
              SamplingParams(frequency_penalty=-1.0)]
    outputs = [[2, 2, 4], [1], [5, 5, 5]]
    out = apply_presence_frequency(logits, outputs, params)
    expected = torch.zeros(3, 6)
    expected[0, 2] = -(0.5 + 2 * 0.25)
    expected[0, 4] = -(0.5 + 0.25)
    expected[2, 5] = 3.0
    assert torch.equal(out, expected) and torch.equal(logits, torch.zeros(3, 6))
    with pytest.raises(ValueError, match="presence_penalty"):
        SamplingParams(presence_penalty=3)
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=21)


def test_constrained_requests_survive_preemption(model):
    """A cache too small for all rows at once preempts and recomputes some; the matchers keep
    their state, so every output still validates."""
    make = constraint_factory(model.tokenizer, json_schema=SCHEMA)
    engine = Engine(model, num_blocks=12, max_num_seqs=8)
    reqs = [engine.add_request(model.tokenizer.encode(f"# record {i}\n"), 70,
                               params=SamplingParams(do_sample=True, seed=i), eos_token_id=0, constraint=make())
            for i in range(6)]
    for _ in engine.run():
        pass
    assert engine.stats["preemptions"] > 0
    for r in reqs:
        assert r.finish_reason == "stop"
        jsonschema.validate(json.loads(text_of(model, r)), SCHEMA)
