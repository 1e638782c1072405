"""benchmarks/convert_gguf.py writes a GGUF that llama.cpp loads and whose logits match mpt_lite's
(float32, same weights); gguf (in the test extra) reads it back. The llama.cpp test skips without
llama-cpp-python (it builds from source for minutes: scripts/install_llama_cpp.sh), except where
MPT_LITE_REQUIRE_LLAMA_CPP=1 (CI, which installs it) makes that a failure."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoints import random_state, tiny_config, write_safetensors_shards

pytest.importorskip("gguf", reason="gguf is not installed (pip install -e '.[bench]')")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from convert_gguf import convert, gguf_name  # noqa: E402


def test_tensor_names():
    assert gguf_name("transformer.wte.weight") == "token_embd.weight"
    assert gguf_name("transformer.blocks.3.attn.Wqkv.weight") == "blk.3.attn_qkv.weight"
    assert gguf_name("transformer.blocks.0.ffn.down_proj.weight") == "blk.0.ffn_down.weight"
    assert gguf_name("transformer.norm_f.weight") == "output_norm.weight"
    assert gguf_name("lm_head.weight") is None
    with pytest.raises(KeyError):
        gguf_name("transformer.blocks.0.mystery.weight")


def test_llama_cpp_logits_match(tmp_path):
    if os.environ.get("MPT_LITE_REQUIRE_LLAMA_CPP") == "1":
        import llama_cpp  # CI installed it (.ci/run): missing is a failure there, not a skip
    else:
        llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed "
                                        "(scripts/install_llama_cpp.sh)")
    import mpt_lite

    cfg = tiny_config(d_model=64, n_heads=4, n_layers=2, vocab_size=320, max_seq_len=128)
    write_safetensors_shards(tmp_path / "ckpt", cfg, random_state(cfg, std=0.05))
    path = convert(tmp_path / "ckpt", tmp_path / "m.gguf")
    ids = torch.randint(1, 320, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    ours = mpt_lite.MptForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    with torch.inference_mode():
        ref = ours(torch.tensor([ids])).logits[0].numpy()
    llm = llama_cpp.Llama(str(path), n_ctx=128, n_threads=1, logits_all=True, verbose=False)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    llm.close()
    cos = (ref * got).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
    assert cos.min() > 0.999, cos.min()
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.9


def test_gguf_file_reads_back_with_the_gguf_reader(tmp_path):
    """gguf's own reader (the oracle) finds llama.cpp's MPT names, shapes, metadata and our weights."""
    import gguf

    cfg = tiny_config(d_model=64, n_heads=4, n_layers=2, vocab_size=320, max_seq_len=128,
                      attn_config={"alibi_bias_max": 8, "clip_qkv": 6.0})
    state = random_state(cfg, std=0.05)
    write_safetensors_shards(tmp_path / "ckpt", cfg, state)
    reader = gguf.GGUFReader(str(convert(tmp_path / "ckpt", tmp_path / "m.gguf")))
    fields = {f.name: f for f in reader.fields.values()}

    def scalar(name):
        f = fields[name]
        return f.parts[f.data[0]].tolist()[0]

    assert bytes(fields["general.architecture"].parts[-1]).decode() == "mpt"
    assert scalar("mpt.block_count") == 2 and scalar("mpt.embedding_length") == 64
    assert scalar("mpt.attention.head_count") == 4 and scalar("mpt.context_length") == 128
    assert scalar("mpt.attention.max_alibi_bias") == 8.0 and scalar("mpt.attention.clamp_kqv") == 6.0
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == len(state)
    emb = tensors["token_embd.weight"]
    want = state["transformer.wte.weight"].to(torch.bfloat16).float().numpy()
    got = np.asarray(emb.data, dtype=np.float32).reshape(want.shape)
    assert np.allclose(got, want, atol=1e-3)
    assert tuple(int(n) for n in tensors["blk.1.ffn_up.weight"].shape) == (64, 256)
