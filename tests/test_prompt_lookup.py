"""Prompt-lookup decoding: drafts from the sequence itself, verified in one forward pass. Greedy
output must be plain greedy's token for token; rejected tokens leave no trace in the cache."""
import pytest
import torch

from checkpoints import random_causal_lm, successor_lm

import mpt_lite
from mpt_lite import Engine
from mpt_lite.runtime.prompt_lookup import propose
from mpt_lite.runtime.request import Request
from mpt_lite.runtime.sampler import SamplingParams
from mpt_lite.runtime.speculative import verify

CODE = '''def parse_header(line):
    key, _, value = line.partition(":")
    return key.strip().lower(), value.strip()


def parse_headers(lines):
    headers = {}
    for line in lines:
        if not line.strip():
            break
        key, value = parse_header(line)
        headers[key] = value
    return headers
'''
# The module twice, then its start (greedy output with and without drafts must agree on it).
COPY_PROMPT = CODE + "\n\n" + CODE + "\n\n" + CODE[:60]
FREE_PROMPT = "The weather in the mountains changes quickly, and"


@pytest.fixture(scope="module")
def default_model():
    return mpt_lite.load()


def test_propose_takes_what_followed_the_earliest_longest_match():
    assert propose([1, 2, 3, 4, 5, 1, 2, 3], 3) == [4, 5, 1]
    assert propose([9, 2, 3, 4, 5, 7, 2, 3], 2) == [4, 5]
    assert propose([1, 2, 3, 4], 3) == []          # no earlier occurrence
    assert propose([1, 2, 3, 1, 2], 0) == []
    assert propose([5, 5, 5, 5], 4) == [5]          # runs to the end of the sequence


@pytest.mark.parametrize("prompt", [COPY_PROMPT, FREE_PROMPT], ids=["copy", "free"])
def test_default_model_greedy_tokens_equal_plain_greedy(default_model, prompt):
    ids = torch.tensor([default_model.tokenizer.encode(prompt)])
    plain = default_model.generate(ids, max_new_tokens=80)
    for k in (3, 10):
        assert torch.equal(default_model.generate(ids, max_new_tokens=80, prompt_lookup_num_tokens=k), plain)


def test_a_model_that_repeats_its_prompt_accepts_drafts():
    """A model whose greedy continuation repeats a cycle of 20 tokens (checkpoints.successor_lm):
    after the cycle twice in the prompt, drafts from the prompt are accepted and the 60 tokens take
    far fewer steps. (The shipped default model, fine-tuned against greedy loops, no longer
    continues a module it has seen twice, so it cannot show this.)"""
    cycle = list(range(5, 25))
    model = successor_lm(cycle + cycle[:1], vocab_size=64)
    engine = Engine(model, num_blocks=64)
    plain = Engine(model, num_blocks=64)
    ref = plain.add_request(cycle * 2 + cycle[:3], 60)
    list(plain.run())
    req = engine.add_request(cycle * 2 + cycle[:3], 60, prompt_lookup_num_tokens=10)
    list(engine.run())
    assert req.output == ref.output == (cycle * 4)[3:63]
    assert req.accepted >= 40 and engine.stats["steps"] < 60 // 5  # ~10 tokens a step
    assert engine.cache.num_free_blocks == 64  # every block, rejected drafts' included, is back


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_models_greedy_equal_plain_and_rollback_is_exact(seed):
    model = random_causal_lm(seed, vocab_size=50, max_seq_len=256)  # a small vocabulary repeats itself
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 50, (12,), generator=g).tolist()
    prompts = [base * 3, torch.randint(0, 50, (30,), generator=g).tolist()]
    for prompt in prompts:
        ref = Engine(model, num_blocks=64, block_size=4)
        plain = ref.add_request(prompt, 60)
        list(ref.run())
        engine = Engine(model, num_blocks=64, block_size=4)
        req = engine.add_request(prompt, 60, prompt_lookup_num_tokens=5, keep_cache=True)
        while engine.has_unfinished():
            engine.step()
            seq = req.blocks
            # after each step: K/V for every real token but the last, blocks for exactly those
            assert seq.num_cached == len(req.tokens) - 1 or req.finished
            assert len(seq.table) == -(-seq.num_cached // 4)
        assert req.output == plain.output
        assert req.drafted > 0
        # the cache holds what plain decoding computed: next-token logits agree
        n = len(req.tokens)
        from mpt_lite.runtime.kv_cache import PagedStep
        with torch.inference_mode():
            step = PagedStep(engine.cache, [req.blocks], [n - 1], [n])
            got = model.forward_paged(torch.tensor(req.tokens[-1:]), step, step.last_rows)[0]
            want = model(torch.tensor([req.tokens])).logits[0, -1]
        assert (got - want).abs().max() < 1e-4


def test_batch_with_and_without_lookup_and_eos_inside_a_draft():
    model = random_causal_lm(7, vocab_size=40, max_seq_len=256)
    prompt = [3, 4, 5, 6] * 6
    ref = Engine(model, num_blocks=64)
    plain = [ref.add_request(prompt, 40), ref.add_request(prompt[:10], 40)]
    list(ref.run())
    eos = plain[0].output[25]  # a token the greedy output reaches: generation must stop at it
    ref2 = Engine(model, num_blocks=64)
    stopped = ref2.add_request(prompt, 40, eos_token_id=eos)
    list(ref2.run())
    engine = Engine(model, num_blocks=64)
    a = engine.add_request(prompt, 40, prompt_lookup_num_tokens=6)
    b = engine.add_request(prompt[:10], 40)
    c = engine.add_request(prompt, 40, prompt_lookup_num_tokens=6, eos_token_id=eos)
    list(engine.run())
    assert a.output == plain[0].output and b.output == plain[1].output
    assert c.output == stopped.output and c.finish_reason == "eos"
    assert engine.cache.num_free_blocks == 64


def test_sampling_keeps_the_target_distribution():
    """The rejection rule: over many draws, the first emitted token follows the model's
    distribution whatever was drafted, and so does the next one after an accepted draft."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0], [0.0, 1.5, 0.2, 0.3, -0.5], [1.0, 1.0, 1.0, 0.0, 0.0]])
    params = SamplingParams(do_sample=True, temperature=0.8, top_k=4, seed=0)
    p = torch.softmax(logits / 0.8, -1)
    for row in p:  # top_k=4 drops each row's least likely token
        row[row.argmin()] = 0
    p = p / p.sum(-1, keepdim=True)
    req = Request(0, [1, 2], 10, params, frozenset())
    req.generator = torch.Generator().manual_seed(0)
    n = 8000
    first = torch.zeros(5)
    second_after_1 = torch.zeros(5)
    for _ in range(n):
        out, accepted = verify(logits, req, [1, 3])
        first[out[0]] += 1
        if out[0] == 1:
            second_after_1[out[1]] += 1
    assert (first / n - p[0]).abs().max() < 0.025
    assert (second_after_1 / second_after_1.sum() - p[1]).abs().max() < 0.035


def test_bad_values_are_refused(default_model):
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens"):
        default_model.generate("x", max_new_tokens=2, prompt_lookup_num_tokens=-1)
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens"):
        default_model.generate("x", max_new_tokens=2, prompt_lookup_num_tokens=1.5)
