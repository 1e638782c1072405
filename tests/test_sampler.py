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


def test_sampled_rows_draw_as_a_batch_would():
    """On the CPU each sampled row draws alone (no OpenMP region); with the same generators the draws equal the
    batched _filtered / cumsum / searchsorted path run over all rows at once."""
    from mpt_lite.runtime.sampler import _draw

    logits = torch.randn(6, 3000, generator=torch.Generator().manual_seed(1)) * 3
    params = [SamplingParams(do_sample=True, temperature=t, top_k=k, top_p=p, seed=i)
              for i, (t, k, p) in enumerate([(0.7, 0, 1.0), (1.0, 50, 1.0), (1.3, 0, 0.9), (0.5, 10, 0.8),
                                             (1.0, 0, 0.95), (2.0, 3, 1.0)])]
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(6)]
    for _ in range(3):
        want = _draw(logits, params, gens()).tolist()
        assert sample_batch(logits, params, gens()) == want
        logits = logits.roll(7, dims=1)
