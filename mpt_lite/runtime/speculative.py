"""Verifying speculative tokens: one forward pass computed the logits after the last real token
and after each drafted token; keep the drafted prefix the model agrees with, plus one token of its
own. Greedy: a drafted token is kept while it is the argmax, so the output is plain greedy's.
Sampling: the standard rejection rule (Leviathan et al. 2023): keep drafted token d with
probability min(1, p(d) / q(d)), else draw from max(p - q, 0) renormalized, where p is the
model's distribution and q the draft's (an assistant's; prompt lookup proposes with certainty, so
q puts all on d: keep d with probability p(d), else draw from p without d). The output is
distributed exactly as plain sampling."""
from __future__ import annotations

import torch

from .request import Request
from .sampler import apply_repetition_penalty, probabilities, sample_batch


def verify(logits: torch.Tensor, req: Request, draft: list[int],
           q: torch.Tensor | None = None) -> tuple[list[int], int]:
    """logits (len(draft) + 1, vocab): row j follows the last real token and draft[:j]; q
    (len(draft), vocab): the distributions the drafts were drawn from (None: drafted with
    certainty). Returns the tokens to append (the accepted drafts and one more) and how many
    drafts were accepted."""
    n, params = len(draft) + 1, req.params
    histories = [req.tokens + draft[:j] for j in range(n)] if params.repetition_penalty != 1.0 else None
    if not params.do_sample:
        targets = sample_batch(logits, [params] * n, [None] * n, histories)
        out: list[int] = []
        for d, t in zip(draft, targets):
            if d != t:
                break
            out.append(d)
        out.append(targets[len(out)])
        return out, len(out) - 1
    logits = logits.float()
    if histories is not None:
        logits = apply_repetition_penalty(logits, histories, [params.repetition_penalty] * n)
    p = probabilities(logits, [params] * n).cpu()
    g = req.generator
    out = []
    for j, d in enumerate(draft):
        qd = 1.0 if q is None else q[j, d].item()
        if torch.rand(1, generator=g).item() * qd < p[j, d].item():
            out.append(d)
            continue
        if q is None:
            residual = p[j].clone()
            residual[d] = 0.0
        else:
            residual = (p[j] - q[j]).clamp(min=0.0)
        if residual.sum() <= 0:  # p == q up to rounding: then a rejection is rounding too
            residual = p[j]
        out.append(int(torch.multinomial(residual, 1, generator=g)))
        return out, j
    out.append(int(torch.multinomial(p[-1], 1, generator=g)))
    return out, len(draft)
