"""`mpt-lite serve` over real HTTP on loopback: the server runs uvicorn (in a thread here, and
as the `mpt-lite serve` command in a subprocess) with the embedded default model; httpx and the
openai client talk to it."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

import mpt_lite
from mpt_lite import cli
from mpt_lite.server import create_app, server_thread
from subproc import ROOT

MODEL = "mpt-lite-test"
BODY_CAP = 64 * 1024
CHAT = [{"role": "user", "content": "Write a function that adds two numbers."}]


@pytest.fixture(scope="module")
def model():
    return mpt_lite.load(bits=None)


@pytest.fixture(scope="module")
def url(model):
    app = create_app(model, model_name=MODEL, num_blocks=1024, max_num_seqs=16, max_queue=32,
                     max_body_bytes=BODY_CAP)
    with server_thread(app) as base:
        yield base


@pytest.fixture()
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def sse(response: httpx.Response) -> list:
    """The `data:` payloads of an event stream ('[DONE]' kept as the string)."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", line
    return out


def wait_idle(client: httpx.Client, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = client.get("/health").json()
        if h["running"] == 0 and h["waiting"] == 0 and h["kv_blocks_free"] == h["kv_blocks_total"]:
            return h
        assert time.monotonic() < deadline, f"the server did not go idle: {h}"
        time.sleep(0.02)


# ---- answers ----

def test_models_and_health(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == MODEL
    assert h["kv_blocks_total"] == 1024 and h["max_num_seqs"] == 16 and h["max_queue"] == 32


def test_completion_matches_generate(client, model):
    prompt = "def fibonacci(n):"
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == MODEL
    choice = body["choices"][0]
    assert choice["text"] == model.generate(prompt, max_new_tokens=24)
    assert choice["finish_reason"] == "length"
    n_prompt = len(model.tokenizer.encode(prompt))
    assert body["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 24, "total_tokens": n_prompt + 24}

    with client.stream("POST", "/v1/completions", json={"prompt": prompt, "max_tokens": 24, "temperature": 0,
                                                        "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    assert all(e["object"] == "text_completion" for e in events[:-1])
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == choice["text"]


def test_chat_streaming_and_whole(client, model):
    expected = model.chat(CHAT, max_new_tokens=20)
    r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": CHAT, "max_tokens": 20,
                                                  "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected}
    prompt_ids = model.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)
    assert body["usage"]["total_tokens"] == len(prompt_ids) + body["usage"]["completion_tokens"]

    with client.stream("POST", "/v1/chat/completions", json={
            "messages": CHAT, "max_tokens": 20, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        events = sse(r)
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == body["choices"][0]["finish_reason"]
    assert usage["choices"] == [] and usage["usage"] == body["usage"]


def test_stop_strings(client):
    req = {"prompt": "def fibonacci(n):", "max_tokens": 48, "temperature": 0}
    full = client.post("/v1/completions", json=req).json()["choices"][0]["text"]
    assert len(full) > 40, full
    stop = full[30:36]  # text from the middle of the greedy answer
    cut = full.index(stop)
    for stream in (False, True):
        body = {**req, "stop": ["\x00never", stop], "stream": stream}
        if stream:
            with client.stream("POST", "/v1/completions", json=body) as r:
                events = sse(r)
            text = "".join(e["choices"][0]["text"] for e in events[:-1])
            finish = events[-2]["choices"][0]["finish_reason"]
        else:
            answer = client.post("/v1/completions", json=body).json()
            text, finish = answer["choices"][0]["text"], answer["choices"][0]["finish_reason"]
            assert answer["usage"]["completion_tokens"] < 48
        assert text == full[:cut] and finish == "stop"


def test_sixteen_concurrent_streams_match_alone(client, url):
    prompts = [f"def {name}(x):" for name in ("add", "load", "parse", "main", "run", "split", "join", "copy",
                                              "read", "write", "open", "close", "get", "set", "find", "sort")]
    alone = []
    for p in prompts:
        r = client.post("/v1/completions", json={"prompt": p, "max_tokens": 32, "temperature": 0})
        alone.append((r.json()["choices"][0]["text"], r.json()["usage"]["completion_tokens"]))
    steps_before = client.get("/health").json()["steps"]

    async def one(ac: httpx.AsyncClient, p: str):
        body = {"prompt": p, "max_tokens": 32, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        async with ac.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            events = [json.loads(line[6:]) for line in [x async for x in r.aiter_lines()]
                      if line.startswith("data: {")]
        return "".join(e["choices"][0]["text"] for e in events if e["choices"]), events[-1]["usage"]["completion_tokens"]

    async def all_of():
        async with httpx.AsyncClient(base_url=url, timeout=60) as ac:
            return await asyncio.gather(*(one(ac, p) for p in prompts))

    together = asyncio.run(all_of())
    assert together == alone
    steps = client.get("/health").json()["steps"] - steps_before
    assert steps < sum(n for _, n in alone) / 2, f"{steps} engine steps for 16 requests: they did not decode together"
    wait_idle(client)


# ---- clients that go away ----

def test_disconnect_mid_stream_frees_blocks(client):
    before = wait_idle(client)["counters"]
    body = {"prompt": "class Parser:", "max_tokens": 900, "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        got = 0
        for line in r.iter_lines():
            got += line.startswith("data: {")
            if got == 3:
                h = client.get("/health").json()
                assert h["running"] == 1 and h["kv_blocks_free"] < h["kv_blocks_total"]
                break
    # leaving the block closes the connection before the answer is complete
    after = wait_idle(client)["counters"]
    assert after["aborted"] == before["aborted"] + 1
    assert after["completed"] == before["completed"]
    assert after["completion_tokens"] == before["completion_tokens"]


def test_disconnect_while_waiting_for_a_whole_answer(url, client):
    before = wait_idle(client)["counters"]
    with httpx.Client(base_url=url, timeout=httpx.Timeout(30, read=0.3)) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            impatient.post("/v1/completions", json={"prompt": "class Parser:", "max_tokens": 900, "temperature": 0})
    after = wait_idle(client)["counters"]
    assert after["aborted"] == before["aborted"] + 1 and after["completed"] == before["completed"]


# ---- bad input ----

LONG_PROMPT = "x = 1\n" * 1100  # > 1024 tokens, < the body cap


@pytest.mark.parametrize("path,payload,status,param", [
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b"", 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", {"max_tokens": 5}, 400, "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 2, 99999]}, 400, None),
    ("/v1/completions", {"prompt": "x", "n": 0}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "n": 17}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "echo": True, "logprobs": 1}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "presence_penalty": 2.5}, 400, "presence_penalty"),
    ("/v1/completions", {"prompt": "x", "frequency_penalty": "1"}, 400, "frequency_penalty"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 4, "max_completion_tokens": 5}, 400, None),
    ("/v1/completions", {"prompt": "x", "max_completion_tokens": 5000}, 400, "max_completion_tokens"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"5": 10}}, 400, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "response_format": {"type": "xml"}}, 400, "response_format.type"),
    ("/v1/completions", {"prompt": "x", "response_format": {"type": "json_schema"}}, 400, "response_format"),
    ("/v1/completions", {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {
        "name": "bad", "schema": {"type": "integr"}}}}, 400, "response_format"),
    ("/v1/completions", {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {
        "name": "bad", "schema": {"type": "string", "pattern": "(unclosed"}}}}, 400, "response_format"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": LONG_PROMPT}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 5000}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hello"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, 400, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    ("/v1/chat/completions", {"messages": CHAT, "n": 100}, 400, "n"),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 2}, 400, None),
    ("/v1/chat/completions", {"messages": CHAT, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": [{"type": "function"}]}, 400, "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG_PROMPT}]}, 400, "messages"),
])
def test_bad_requests(client, path, payload, status, param):
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    r = client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    if payload is not None and "context" in err["message"]:
        assert err["code"] == "context_length_exceeded"


def test_body_over_the_cap(client):
    big = json.dumps({"prompt": "y" * BODY_CAP}).encode()
    r = client.post("/v1/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the cap holds while the body streams in
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    r = client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_unknown_route_and_method(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_queue_full_gets_429(model):
    app = create_app(model, model_name=MODEL, num_blocks=256, max_num_seqs=1, max_queue=1)
    body = {"prompt": "class Parser:", "max_tokens": 900, "temperature": 0, "stream": True}
    with server_thread(app) as base, httpx.Client(base_url=base, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json=body) as running, \
                c.stream("POST", "/v1/completions", json=body) as waiting:
            assert running.status_code == 200 and waiting.status_code == 200
            h = c.get("/health").json()
            assert h["active_requests"] == 2 and h["capacity"] == 2
            r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "queue_full" and "retry-after" in r.headers
        h = wait_idle(c)
        assert h["counters"]["rejected"] == 1 and h["counters"]["aborted"] == 2
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


# ---- the openai client ----

def test_openai_client(url, model):
    oa = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in oa.models.list()] == [MODEL]
    expected = model.chat(CHAT, max_new_tokens=16)
    answer = oa.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=16, temperature=0)
    assert answer.choices[0].message.content == expected and answer.usage.completion_tokens <= 16
    pieces = [c.choices[0].delta.content or "" for c in oa.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=16, temperature=0, stream=True) if c.choices]
    assert "".join(pieces) == expected
    text = oa.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=12, temperature=0)
    assert text.choices[0].text == model.generate("def add(a, b):", max_new_tokens=12)
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        oa.chat.completions.create(model=MODEL, messages=CHAT, logit_bias={"5": 3})


# ---- the command ----

def test_serve_command_with_api_key():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mpt_lite.cli", "serve", "--bits", "none", "--port", "0",
                             "--api-key", "sekrit", "--served-model-name", "m"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        base = None
        deadline = time.monotonic() + 60
        while base is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "mpt-lite serve exited before it was ready"
            if "serving m on " in line:
                base = line.split(" on ")[1].split()[0]
        assert base is not None and base.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=base, timeout=30) as c:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit"}):
                for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/completions")):
                    r = c.request(method, path, headers=headers, json={"prompt": "x"})
                    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        oa = openai.OpenAI(base_url=f"{base}/v1", api_key="sekrit", max_retries=0)
        # greedy: a sampled reply may draw the chat model's end of turn within 4 tokens
        assert oa.completions.create(model="m", prompt="import", max_tokens=4,
                                     temperature=0).usage.completion_tokens == 4
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="nope", max_retries=0).models.list()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert "server stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_serve_command_errors(capsys):
    assert cli.main(["serve", "--port", "70000"]) == 1
    assert "port must be in 0..65535" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert cli.main(["serve", "--port", str(taken.getsockname()[1])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mpt-lite: error: cannot listen on 127.0.0.1:") and err.count("\n") == 1
    assert cli.main(["serve", "--max-queue", "-1"]) == 1
    assert "--max-queue must be >= 0" in capsys.readouterr().err
