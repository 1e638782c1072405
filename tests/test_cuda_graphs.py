"""Decode steps as replayed CUDA graphs (runtime/cuda_graphs.py): the host-side choices everywhere,
and on a GPU (skipped without one) the graphs' tokens and logits against the eager forward."""
import warnings

import pytest
import torch

import mpt_lite
from devices import needs_cuda
from mpt_lite import kernels
from mpt_lite.kernels import quant_ops
from mpt_lite.kernels.reference import ref_matmul_bf16_operands
from mpt_lite.runtime import cuda_graphs
from mpt_lite.runtime.kv_cache import PagedStep


def test_bucket_for():
    assert [cuda_graphs.bucket_for(n) for n in (1, 2, 3, 5, 8, 9, 17, 32)] == [1, 2, 4, 8, 8, 16, 32, 32]
    assert cuda_graphs.bucket_for(33) is None


def test_no_graphs_on_cpu():
    cfg = mpt_lite.MptConfig(d_model=64, n_heads=4, n_layers=1, vocab_size=64, max_seq_len=64)
    engine = mpt_lite.Engine(mpt_lite.MptForCausalLM(cfg).eval(), num_blocks=8)
    assert engine.cuda_graphs_fallback_reason == "the KV cache is on cpu"


def test_attach_device_copy_checks_its_arguments():
    host = torch.zeros(4, dtype=torch.int32)
    with pytest.raises(ValueError, match="CUDA tensor"):
        kernels.attach_device_copy(host, torch.zeros(4, dtype=torch.int32))


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = mpt_lite.MptConfig(d_model=128, n_heads=4, n_layers=2, vocab_size=256, max_seq_len=1024, expansion_ratio=4)
    folder = tmp_path_factory.mktemp("tiny-graphs")
    mpt_lite.MptForCausalLM(cfg).eval().save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mpt_lite.MptForCausalLM.from_pretrained(folder, bits=4, device="cuda")


def run(model, prompts, new, monkeypatch, graphs, **engine_kw):
    monkeypatch.setenv("MPT_LITE_CUDA_GRAPHS", "1" if graphs else "0")
    engine = mpt_lite.Engine(model, num_blocks=256, block_size=16, **engine_kw)
    assert (engine.cuda_graphs_fallback_reason is None) == graphs
    reqs = [engine.add_request(p, new) for p in prompts]
    while any(not r.finished for r in reqs):
        engine.step()
    return [r.output for r in reqs], engine


@needs_cuda
@pytest.mark.parametrize("kv_dtype", [None, torch.int8])
def test_graph_decode_matches_eager(gpu_model, monkeypatch, kv_dtype):
    g = torch.Generator().manual_seed(3)
    # 5 sequences (bucket 8: three padding rows); prompt lengths cross block boundaries, one context
    # passes 512 keys (the attention's partitioned path)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (3, 17, 40, 9, 530)]
    eager, _ = run(gpu_model, prompts, 24, monkeypatch, False, kv_dtype=kv_dtype)
    graph, engine = run(gpu_model, prompts, 24, monkeypatch, True, kv_dtype=kv_dtype)
    assert set(engine._graphs.graphs) >= {8}  # captured and replayed
    agree = sum(a[:8] == b[:8] for a, b in zip(eager, graph))
    assert agree == len(prompts), (eager, graph)  # greedy: the first tokens agree exactly


@needs_cuda
def test_graph_logits_equal_eager_logits(gpu_model):
    engine = mpt_lite.Engine(gpu_model, num_blocks=64, block_size=16)
    assert engine._graphs is not None
    reqs = [engine.add_request([5, 6, 7, 8, 9][: n + 1], 4) for n in range(3)]
    engine.step()  # prefill
    batch = reqs
    ids = torch.tensor([r.tokens[-1] for r in batch])
    step = PagedStep(engine.cache, [r.blocks for r in batch], [len(r.tokens) - 1 for r in batch],
                     [len(r.tokens) for r in batch])
    with torch.inference_mode():
        eager = gpu_model.forward_paged(ids, step).float()
    graph = engine._graphs.logits(ids, step).float()
    torch.testing.assert_close(graph, eager, atol=1e-4, rtol=1e-4)


@needs_cuda
def test_wmma_gemm_still_matches_its_reference(monkeypatch):
    """The WMMA GEMM runs only when CUDA_CUBLAS_MIN_M is raised: keep it correct."""
    monkeypatch.setattr(quant_ops, "CUDA_CUBLAS_MIN_M", 1 << 30)
    w = torch.randn(96, 256)
    x = torch.randn(40, 256)
    packed, scales = kernels.quantize_int4(w)
    y = kernels.matmul_int4(x.cuda(), packed.cuda(), scales.cuda(), 256).cpu()
    wd = kernels.dequantize_int4(packed, scales, 256)
    ref = ref_matmul_bf16_operands(x, wd)
    torch.testing.assert_close(y, ref, atol=1e-3, rtol=1e-3)
