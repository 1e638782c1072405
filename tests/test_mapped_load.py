"""A model saved quantized by mpt_lite reloads as views of a memory map of its file (no copy), and
stays correct when that file is replaced under it."""
from __future__ import annotations

import os

import pytest
import torch

import mpt_lite
from mpt_lite.quant.layers import quantized_modules


def _mapped_ranges(path) -> list[tuple[int, int]]:
    """Address ranges of this process that map `path` (from the kernel's /proc/self/maps)."""
    real = os.path.realpath(path)
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == real:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi))
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    cfg = mpt_lite.MptConfig(d_model=64, n_heads=4, n_layers=2, vocab_size=97, max_seq_len=32, expansion_ratio=4)
    src = tmp_path_factory.mktemp("float")
    mpt_lite.MptForCausalLM(cfg).eval().save_pretrained(src)
    out = {}
    for fmt in ("int8", "nf4", "int4"):
        bits = 8 if fmt == "int8" else 4
        model = mpt_lite.MptForCausalLM.from_pretrained(src, bits=bits, quant_type=fmt)
        folder = tmp_path_factory.mktemp(fmt)
        model.save_pretrained(folder)
        out[fmt] = (model, folder)
    return out


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc/self/maps")
@pytest.mark.parametrize("fmt", ["int8", "nf4", "int4"])
def test_saved_codes_are_mapped_not_copied(saved, fmt):
    original, folder = saved[fmt]
    model = mpt_lite.MptForCausalLM.from_pretrained(folder)
    ranges = _mapped_ranges(folder / "model.safetensors")
    assert ranges, "the saved file is not memory-mapped"
    qmods = quantized_modules(model)
    assert qmods
    for name, mod in qmods.items():
        for piece, buf in mod.named_buffers(recurse=False):
            ptr = buf.data_ptr()
            assert any(lo <= ptr < hi for lo, hi in ranges), f"{name}.{piece} was copied, not mapped"
    ids = torch.tensor([[1, 5, 9, 33, 2]])
    torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["int4"])
def test_saving_over_the_mapped_file_keeps_the_model_intact(saved, fmt, tmp_path):
    original, folder = saved[fmt]
    work = tmp_path / "m"
    original.save_pretrained(work)
    model = mpt_lite.MptForCausalLM.from_pretrained(work)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    before = model(ids).logits.clone()
    model.save_pretrained(work)  # written beside the file and renamed over it: the map keeps the old inode
    torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)
    again = mpt_lite.MptForCausalLM.from_pretrained(work)
    torch.testing.assert_close(again(ids).logits, before, rtol=0, atol=0)
