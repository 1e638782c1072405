"""Log-probabilities of the tokens a request chose, and of the most likely alternatives, from the
model's own distribution (log-softmax of its logits, before temperature, penalties or a grammar
mask change them), as OpenAI's `logprobs` reports them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token, logprob), most likely first


def record_logprobs(logits: torch.Tensor, reqs: Sequence[Any], tokens: Sequence[int]) -> None:
    """Appends a TokenLogprob to req.logprobs for every request whose params ask for logprobs;
    logits (rows, vocab) are the rows of reqs, tokens the tokens they chose."""
    rows = [j for j, r in enumerate(reqs) if r.params.logprobs is not None]
    if not rows:
        return
    idx = torch.tensor(rows, device=logits.device)
    lp = torch.log_softmax(logits[idx].float(), dim=-1)
    chosen_ids = torch.tensor([tokens[j] for j in rows], device=logits.device)
    chosen = lp.gather(1, chosen_ids[:, None]).squeeze(1).tolist()
    k = min(max(reqs[j].params.logprobs for j in rows), lp.shape[-1])
    top_v, top_i = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
    top_v, top_i = top_v.tolist(), top_i.tolist()
    for n, j in enumerate(rows):
        want = reqs[j].params.logprobs
        reqs[j].logprobs.append(TokenLogprob(int(tokens[j]), chosen[n], list(zip(top_i[n][:want], top_v[n][:want]))))
