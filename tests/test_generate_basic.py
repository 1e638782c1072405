"""generate() on token ids against transformers' own generate (greedy), and seeded sampling."""
import pytest
import torch

import mpt_lite
from checkpoints import load_hf, random_state, tiny_config, write_single_safetensors

CFG = tiny_config(n_layers=2, vocab_size=97)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen")
    state = random_state(CFG, seed=31, std=0.4)
    write_single_safetensors(folder, CFG, state)
    ours = mpt_lite.MptForCausalLM.from_pretrained(folder)
    theirs, _ = load_hf("MptForCausalLM", state, CFG)
    return ours, theirs


def test_greedy_ids_match_transformers(models):
    ours, theirs = models
    ids = torch.randint(1, CFG["vocab_size"], (2, 5), generator=torch.Generator().manual_seed(1))
    a = ours.generate(ids, max_new_tokens=12)
    b = theirs.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert a.shape == (2, 17)
    assert torch.equal(a, b)


def test_greedy_left_padded_batch_matches_transformers(models):
    ours, theirs = models
    ids = torch.randint(1, CFG["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    ids[1, :3] = 0
    a = ours.generate(ids, attention_mask=mask, max_new_tokens=8)
    b = theirs.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
                        eos_token_id=None)
    assert torch.equal(a, b)


def test_eos_stops_generation(models):
    ours, _ = models
    ids = torch.randint(1, CFG["vocab_size"], (1, 5), generator=torch.Generator().manual_seed(3))
    free = ours.generate(ids, max_new_tokens=10)
    eos = int(free[0, 7])  # the third generated token
    stopped = ours.generate(ids, max_new_tokens=10, eos_token_id=eos)
    first = (free[0, 5:] == eos).nonzero()[0].item()
    assert stopped.shape[1] == 5 + first + 1 and int(stopped[0, -1]) == eos


def test_finished_rows_pad_with_the_first_eos_as_transformers(models):
    """Without a pad_token_id, transformers fills a finished row with eos_token_id[0]; with the list's first id
    the larger one, a row that ends early must show it, not the list's smallest."""
    ours, theirs = models
    assert ours.config.pad_token_id is None
    ids = torch.randint(1, CFG["vocab_size"], (2, 5), generator=torch.Generator().manual_seed(4))
    free = ours.generate(ids, max_new_tokens=10)
    early = int(free[0, 6])  # row 0's second new token; row 1 runs on unless it meets it
    other = next(t for t in range(CFG["vocab_size"] - 1, 0, -1) if t not in free[:, 5:].tolist()[0]
                 and t not in free[:, 5:].tolist()[1])
    first, second = (other, early) if other > early else (early, other)
    eos = [first, second]
    a = ours.generate(ids, max_new_tokens=10, eos_token_id=eos)
    b = theirs.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=None)
    assert torch.equal(a, b)
    assert a.shape[1] > 7 and int(a[0, -1]) == first  # row 0 ended at step 2 and was padded


def test_seeded_sampling_is_reproducible(models):
    ours, _ = models
    ids = torch.randint(1, CFG["vocab_size"], (1, 4), generator=torch.Generator().manual_seed(4))
    a = ours.generate(ids, max_new_tokens=15, do_sample=True, temperature=1.5, top_k=20, top_p=0.9, seed=7)
    b = ours.generate(ids, max_new_tokens=15, do_sample=True, temperature=1.5, top_k=20, top_p=0.9, seed=7)
    c = ours.generate(ids, max_new_tokens=15, do_sample=True, temperature=1.5, top_k=20, top_p=0.9, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_one_is_greedy(models):
    ours, _ = models
    ids = torch.randint(1, CFG["vocab_size"], (1, 4), generator=torch.Generator().manual_seed(5))
    assert torch.equal(ours.generate(ids, max_new_tokens=6, do_sample=True, top_k=1, seed=3),
                       ours.generate(ids, max_new_tokens=6))


def test_bad_generation_arguments(models):
    ours, _ = models
    ids = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="top_p"):
        ours.generate(ids, do_sample=True, top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        ours.generate(ids, temperature=-1)
    with pytest.raises(ValueError, match="tokenizer"):
        ours.generate("hello")
    with pytest.raises(IndexError):
        ours.generate(torch.tensor([[CFG["vocab_size"]]]))
    with pytest.raises(ValueError, match="max_seq_len"):
        ours.generate(ids, max_new_tokens=CFG["max_seq_len"])
