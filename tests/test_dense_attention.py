"""kernels.causal_alibi_attention (fresh prompts: torch SDPA on the GPU, the paged prefill kernel on
the CPU) against the plain-torch paged reference over a cache that holds only the same tokens; on the
CPU and, where there is one, the GPU."""
import pytest
import torch

from devices import DEVICES
from mpt_lite import kernels
from mpt_lite.kernels import dense_attention
from mpt_lite.kernels.reference import ref_paged_attention_prefill, ref_write_kv_cache
from mpt_lite.model.layers import alibi_slopes


@pytest.mark.parametrize("path", ["public", "sdpa"])
@pytest.mark.parametrize("lens", [[5, 19, 1, 40], [48]])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads,kv_heads,alibi", [(4, 4, True), (4, 1, True), (2, 2, False)])
def test_causal_alibi_attention_matches_paged_reference(device, heads, kv_heads, alibi, lens, path, monkeypatch):
    """public: what the device takes (the CPU: the paged kernel over the tokens' own k/v, in place for
    one sequence of whole blocks; the GPU: SDPA); sdpa: the GPU's path on this device too."""
    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    D, bs = 32, 8
    T = sum(lens)
    q, k, v = (torch.randn(T, h, D, generator=g) for h in (heads, kv_heads, kv_heads))
    slopes = alibi_slopes(heads) if alibi else None
    blocks = [-(-n // bs) for n in lens]
    k_cache = torch.zeros(sum(blocks), bs, kv_heads, D)
    v_cache = torch.zeros_like(k_cache)
    tables = torch.zeros(len(lens), max(blocks), dtype=torch.int32)
    slots, b0 = [], 0
    for s, (n, nb) in enumerate(zip(lens, blocks)):
        tables[s, :nb] = torch.arange(b0, b0 + nb)
        slots += [(b0 + i // bs) * bs + i % bs for i in range(n)]
        b0 += nb
    ref_write_kv_cache(k, v, k_cache, v_cache, torch.tensor(slots))
    qsl = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    want = ref_paged_attention_prefill(q, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32), qsl,
                                       0.3, slopes)
    monkeypatch.setattr("mpt_lite.kernels.dense_attention._MASK_BYTES", 4 * heads * 40 * 16)  # query chunks
    fn = kernels.causal_alibi_attention if path == "public" else dense_attention._sdpa
    got = fn(q.to(device), k.to(device), v.to(device), lens, 0.3, None if slopes is None else slopes.to(device)).cpu()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_causal_alibi_attention_rejects_mismatched_lengths():
    q = torch.randn(6, 2, 8)
    with pytest.raises(ValueError, match="lengths"):
        kernels.causal_alibi_attention(q, q, q, [2, 3], 1.0, None)
