"""The model, cache and engine on "cuda" (skipped without a GPU and the CUDA build): a tiny 4-bit
model's logits on the GPU against the same model on the CPU, and greedy generation through the
paged engine."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import mpt_lite
from devices import needs_cuda

pytestmark = needs_cuda


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = mpt_lite.MptConfig(d_model=128, n_heads=4, n_layers=2, vocab_size=256, max_seq_len=256, expansion_ratio=4)
    folder = tmp_path_factory.mktemp("tiny")
    mpt_lite.MptForCausalLM(cfg).eval().save_pretrained(folder)
    return folder


def load(folder, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mpt_lite.MptForCausalLM.from_pretrained(folder, **kw)


@pytest.mark.parametrize("bits,quant_type", [(4, "nf4"), (4, "int4"), (8, None), (None, None)])
def test_cuda_logits_match_cpu(ckpt, bits, quant_type):
    cpu = load(ckpt, bits=bits, quant_type=quant_type)
    gpu = load(ckpt, bits=bits, quant_type=quant_type, device="cuda")
    assert gpu.device.type == "cuda"
    assert all(b.device.type == "cuda" for b in gpu.buffers())
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = cpu(ids).logits
        b = gpu(ids.cuda()).logits.cpu()  # 80 rows: the tensor-core GEMM (bf16 operands)
        c = gpu(ids[:1, :5].cuda()).logits.cpu()  # 5 rows: the float32 GEMV
    cos = F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    assert cos > 0.999, cos
    c_cpu = cpu(ids[:1, :5]).logits
    if bits is not None:  # the CPU kernels quantize few activation rows to q8 (nf4: its integer path)
        assert F.cosine_similarity(c.flatten(), c_cpu.flatten(), dim=0).item() > 0.999
    else:
        torch.testing.assert_close(c, c_cpu, atol=1e-3, rtol=1e-3)


def test_cuda_engine_generate_matches_cpu(ckpt):
    cpu = load(ckpt, bits=4)
    gpu = load(ckpt, bits=4, device="cuda")
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    a = cpu.generate(ids, max_new_tokens=8)
    b = gpu.generate(ids.cuda(), max_new_tokens=8).cpu()
    # greedy decoding: the first tokens agree (later ones may diverge on a near-tie)
    assert torch.equal(a[:, :22], b[:, :22])
    engine = mpt_lite.Engine(gpu, num_blocks=32)
    assert engine.cache.k[0].device.type == "cuda"
    req = engine.add_request(ids[0], max_new_tokens=4)
    list(engine.run())
    assert len(req.output) == 4
