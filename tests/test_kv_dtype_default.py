"""The Engine's KV dtype when none is given: the model's float dtype (float32 for a quantized model), or
MPT_LITE_KV_DTYPE."""
import pytest
import torch

from checkpoints import random_causal_lm

from mpt_lite import Engine
from mpt_lite.runtime.kv_budget import KV_DTYPE_ENV


def tiny():
    return random_causal_lm(0, vocab_size=300, max_seq_len=128)


def greedy(engine, prompt, n):
    r = engine.add_request(prompt, n)
    list(engine.run())
    return r.output


def test_default_is_the_model_dtype(monkeypatch):
    monkeypatch.delenv(KV_DTYPE_ENV, raising=False)
    assert Engine(tiny(), num_blocks=16).cache.dtype == torch.float32
    assert Engine(tiny().to(torch.bfloat16), num_blocks=16).cache.dtype == torch.bfloat16


@pytest.mark.parametrize("name, dtype", [("int8", torch.int8), ("bfloat16", torch.bfloat16), ("int4", torch.quint4x2)])
def test_env_picks_the_dtype_and_generates_as_the_explicit_choice(monkeypatch, name, dtype):
    model = random_causal_lm(0, vocab_size=300, max_seq_len=128, n_heads=2)  # head_dim 32 (the 4-bit cache's groups)
    prompt = list(range(10, 40))
    monkeypatch.delenv(KV_DTYPE_ENV, raising=False)
    explicit = greedy(Engine(model, num_blocks=16, kv_dtype=dtype), prompt, 12)
    monkeypatch.setenv(KV_DTYPE_ENV, name)
    engine = Engine(model, num_blocks=16)
    assert engine.cache.dtype == dtype
    assert greedy(engine, prompt, 12) == explicit


def test_explicit_kv_dtype_wins_over_env(monkeypatch):
    monkeypatch.setenv(KV_DTYPE_ENV, "int8")
    assert Engine(tiny(), num_blocks=16, kv_dtype=torch.float32).cache.dtype == torch.float32


def test_unknown_env_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(KV_DTYPE_ENV, "int3")
    with pytest.raises(ValueError, match=f"{KV_DTYPE_ENV}='int3'.*int8"):
        Engine(tiny(), num_blocks=16)


def test_env_applies_to_the_assistant_cache_and_greedy_output_stays_plain(monkeypatch):
    target = random_causal_lm(0, vocab_size=60, max_seq_len=128)
    helper = random_causal_lm(10, vocab_size=60, max_seq_len=128, n_layers=1)
    prompt = list(range(3, 30))
    monkeypatch.setenv(KV_DTYPE_ENV, "int8")
    plain = greedy(Engine(target, num_blocks=32), prompt, 20)
    engine = Engine(target, num_blocks=32, assistant_model=helper, num_assistant_tokens=4)
    assert engine.cache.dtype == engine.assistant.cache.dtype == torch.int8
    assert greedy(engine, prompt, 20) == plain
