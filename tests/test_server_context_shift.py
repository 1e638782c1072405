"""The server with context shift and prompt lookup on for every request (mpt-lite serve
--context-shift --prompt-lookup K): a completion streams past max_seq_len."""
import json

import httpx
import pytest

import mpt_lite
from mpt_lite import Engine
from mpt_lite.server import create_app, server_thread


@pytest.fixture(scope="module")
def model():
    return mpt_lite.load(max_seq_len=64)


def test_streams_past_the_context_length(model):
    app = create_app(model, num_blocks=64, request_options={"context_shift": True, "n_keep": 4,
                                                            "prompt_lookup_num_tokens": 4})
    body = {"model": "mpt-lite", "prompt": "def f(x):", "max_tokens": 150, "stream": True, "temperature": 0}
    with server_thread(app) as base, httpx.Client(base_url=base, timeout=120) as client:
        with client.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            events = [json.loads(line[6:]) for line in r.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
    text = "".join(e["choices"][0]["text"] for e in events)
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    engine = Engine(model, num_blocks=64)  # the same request on an engine of its own
    req = engine.add_request(model.tokenizer.encode("def f(x):"), 150, context_shift=True, n_keep=4)
    list(engine.run())
    assert text == model.tokenizer.decode(req.output)


def test_without_context_shift_the_limit_stays(model):
    app = create_app(model, num_blocks=64)
    with server_thread(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        r = client.post("/v1/completions", json={"model": "mpt-lite", "prompt": "def f(x):", "max_tokens": 150})
    assert r.status_code == 400 and "maximum context length" in r.json()["error"]["message"]
