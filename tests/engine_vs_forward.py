"""An engine's greedy log-probabilities beside the model's own plain-torch forward (float attention, no cache)."""
from __future__ import annotations

import torch

from mpt_lite.runtime.sampler import SamplingParams


def greedy_logprobs_against_forward(model, engine, prompt: list[int], new: int) -> list[tuple]:
    """Decodes `new` tokens of prompt greedily through engine with its top-4 log-probabilities. Per new token:
    (the engine's logprobs of its top tokens, forward's logprobs of the same tokens, forward's logprob of the
    engine's pick, forward's best logprob), float64."""
    req = engine.add_request(prompt, new, params=SamplingParams(logprobs=4), eos_token_id=[])
    list(engine.run())
    assert len(req.output) == new
    n = len(prompt)
    with torch.no_grad():
        want = torch.log_softmax(model(torch.tensor([prompt + req.output[:-1]])).logits[0, n - 1:].double(), -1)
    rows = []
    for i, lp in enumerate(req.logprobs):
        got = torch.tensor([p for _, p in lp.top], dtype=torch.float64)
        rows.append((got, want[i, [t for t, _ in lp.top]], want[i, req.output[i]], want[i].max()))
    return rows
