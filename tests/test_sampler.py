"""The sampler's greedy pick against torch's argmax."""
import torch

from mpt_lite.runtime.sampler import SamplingParams, sample_batch


def test_greedy_rows_take_torchs_argmax_with_ties():
    """The CPU greedy pick goes row by row (no OpenMP region); it must equal torch's argmax, ties included (the
    first of equal maxima)."""
    logits = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0))
    logits[1, [10, 700]] = 50.0  # a tie: the first wins
    logits[3] = 0.0  # all equal
    got = sample_batch(logits, [SamplingParams()] * 5, [None] * 5)
    assert got == logits.argmax(dim=-1).tolist() and got[1] == 10 and got[3] == 0
    assert sample_batch(logits[:1], [SamplingParams()], [None]) == [logits[0].argmax().item()]
