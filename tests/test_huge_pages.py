"""Weights moved into transparent huge pages at load (kernels/huge_pages.py, hub/placement.py): the same values,
tied tensors still tied, the same logits and tokens, huge pages really given where the kernel offers them, and
MPT_LITE_HUGE_PAGES honoured and checked. The oracle is the model before the move (or loaded with the move off),
and the kernel's own account of each mapping (/proc/self/smaps)."""
from __future__ import annotations

import copy
import io
import os
import sys

import pytest
import torch

import mpt_lite
from mpt_lite.hub.placement import place_weights
from mpt_lite.kernels import huge_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge pages are a Linux feature")


def _mapping(ptr: int) -> dict:
    """The /proc/self/smaps entry holding address ptr: its range, file path ('' if anonymous), AnonHugePages kB."""
    found = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                if found is not None:
                    break
                if lo <= ptr < hi:
                    found = {"lo": lo, "hi": hi, "path": head[5] if len(head) > 5 else "", "huge_kb": 0}
            elif found is not None and line.startswith("AnonHugePages:"):
                found["huge_kb"] = int(line.split()[1])
    assert found is not None, f"no mapping holds {ptr:#x}"
    return found


def _big_tensors(model, min_bytes):
    seen, out = set(), []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.numel() * t.element_size() >= min_bytes and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out.append((name, t))
    return out


def test_copies_keep_values_dtypes_shapes_and_page_alignment():
    g = torch.Generator().manual_seed(0)
    src = [torch.randn(3, 1000, generator=g), torch.randint(-128, 127, (777,), dtype=torch.int8, generator=g),
           torch.randn(5, 7, 9, generator=g).to(torch.bfloat16), torch.randint(0, 255, (4097,), dtype=torch.uint8),
           torch.randn(2048, generator=g).half()]
    keep = [t.clone() for t in src]
    out = huge_pages.copy_to_huge_pages(src)
    spans = []
    for a, b in zip(out, keep):
        assert a.dtype == b.dtype and a.shape == b.shape and a.is_contiguous()
        assert torch.equal(a, b)
        assert a.data_ptr() % huge_pages.ALIGN == 0
        spans.append((a.data_ptr(), a.data_ptr() + a.numel() * a.element_size()))
    spans.sort()
    assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:])), "copies overlap"
    out[0].zero_()
    assert torch.equal(src[0], keep[0]), "a copy shares memory with its source"
    for a in out:  # each copy is a storage of its own: saving one writes its bytes, not the whole mapping
        assert a.untyped_storage().nbytes() == a.numel() * a.element_size() and a.storage_offset() == 0
    buf = io.BytesIO()
    torch.save(out[1], buf)
    assert buf.tell() < 777 + 4096
    buf.seek(0)
    assert torch.equal(torch.load(buf), keep[1])
    assert len({_mapping(a.data_ptr())["lo"] for a in out}) == 1, "the copies are not in one mapping"


@pytest.mark.skipif(not huge_pages.thp_available(), reason="this kernel gives no transparent huge pages (THP never)")
def test_the_mapping_is_backed_by_huge_pages():
    t = torch.arange(6 << 20, dtype=torch.int32)  # 24 MiB
    (moved,) = huge_pages.copy_to_huge_pages([t])
    m = _mapping(moved.data_ptr())
    assert m["path"] == "" and m["huge_kb"] >= 2048, m


def test_bad_tensors_and_sizes_are_refused():
    with pytest.raises(ValueError, match="contiguous CPU tensors"):
        huge_pages.copy_to_huge_pages([torch.zeros(8, 8).t()])
    assert not huge_pages.placeable(torch.zeros(64)[8:], 1) and huge_pages.placeable(torch.zeros(64)[8:], 1, True)
    assert not huge_pages.placeable(torch.zeros(64), 257) and huge_pages.placeable(torch.zeros(64), 256)
    arena = huge_pages.HugePageArena(16)
    with pytest.raises(ValueError, match="32 bytes do not fit"):
        arena.copy(torch.zeros(8))
    kept = arena.copy(torch.ones(4))
    assert arena.holds(kept) and not arena.holds(torch.ones(4)) and torch.equal(kept, torch.ones(4))
    with pytest.raises(ValueError, match="do not fit"):  # each copy takes whole 4 KiB pages
        arena.copy(torch.zeros(4))


@pytest.mark.parametrize("raw,mode", [("", "auto"), ("auto", "auto"), ("1", "auto"), ("ON", "auto"), ("all", "all"),
                                      ("0", "0"), ("off", "0")])
def test_mode_from_the_environment(monkeypatch, raw, mode):
    monkeypatch.setenv("MPT_LITE_HUGE_PAGES", raw)
    assert huge_pages.huge_page_mode() == mode


def test_a_bad_mode_fails_before_loading(monkeypatch, tmp_path):
    monkeypatch.setenv("MPT_LITE_HUGE_PAGES", "sometimes")
    with pytest.raises(ValueError, match="MPT_LITE_HUGE_PAGES.*'sometimes'"):
        mpt_lite.MptForCausalLM.from_pretrained(tmp_path / "does-not-exist", bits=4)


def test_shared_parameters_and_buffers_stay_shared():
    a, b = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)
    b.weight = a.weight  # one Parameter in two modules
    a.register_buffer("codes", torch.arange(4096, dtype=torch.uint8))
    b.register_buffer("codes", a.codes)  # one buffer in two modules
    net = torch.nn.Sequential(a, b)
    w, codes = a.weight.detach().clone(), a.codes.clone()
    moved = place_weights(net, min_bytes=1)
    assert b.weight is a.weight and b.codes is a.codes
    assert torch.equal(a.weight, w) and torch.equal(a.codes, codes)
    assert moved == 64 * 64 * 4 + 4096 + 2 * 64 * 4  # shared ones once; both biases
    assert _mapping(a.weight.data_ptr())["lo"] == _mapping(a.codes.data_ptr())["lo"]


def _cfg(**kw):
    base = dict(d_model=128, n_heads=4, n_layers=2, vocab_size=320, max_seq_len=64, expansion_ratio=4)
    base.update(kw)
    return mpt_lite.MptConfig(**base)


@pytest.mark.parametrize("fmt", [None, "int8", "nf4", "int4"])
def test_place_weights_keeps_logits_tokens_and_ties(tmp_path, fmt):
    torch.manual_seed(1)
    mpt_lite.MptForCausalLM(_cfg()).eval().save_pretrained(tmp_path)
    kw = {} if fmt is None else {"bits": 8 if fmt == "int8" else 4, "quant_type": fmt}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPT_LITE_HUGE_PAGES", "0")
        ref = mpt_lite.MptForCausalLM.from_pretrained(tmp_path, **kw)
        model = mpt_lite.MptForCausalLM.from_pretrained(tmp_path, **kw)
    ids = torch.tensor([[5, 17, 99, 3, 250, 41, 7]])
    with torch.inference_mode():
        want = ref(ids).logits
    before = {n: t.clone() for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    moved = place_weights(model, min_bytes=1)
    assert moved > 0
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        assert torch.equal(t, before[n]), n
    big = _big_tensors(model, 1)
    assert len({_mapping(t.data_ptr())["lo"] for _, t in big}) == 1
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, want)
    got = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, ref.generate(ids, max_new_tokens=6, do_sample=False))
    twin = copy.deepcopy(model)  # placed weights are ordinary tensors: copies, saves and reloads work
    twin.save_pretrained(tmp_path / "saved")
    with torch.inference_mode():
        assert torch.equal(twin(ids).logits, want)
        assert torch.equal(mpt_lite.MptForCausalLM.from_pretrained(tmp_path / "saved")(ids).logits, want)


def test_loading_places_big_weights_unless_told_not_to(tmp_path, monkeypatch):
    torch.manual_seed(2)
    src = tmp_path / "float"
    mpt_lite.MptForCausalLM(_cfg(d_model=256, vocab_size=512)).eval().save_pretrained(src)
    monkeypatch.setenv("MPT_LITE_HUGE_PAGES", "0")
    off = mpt_lite.MptForCausalLM.from_pretrained(src, bits=8)
    monkeypatch.setenv("MPT_LITE_HUGE_PAGES", "auto")
    on = mpt_lite.MptForCausalLM.from_pretrained(src, bits=8)
    big_on = dict(_big_tensors(on, huge_pages.MIN_BYTES))
    assert "transformer.blocks.0.ffn.up_proj.weight" in big_on  # 1024 x 256 int8 codes
    placed = {_mapping(t.data_ptr())["lo"] for t in big_on.values()}
    if huge_pages.thp_available():
        assert len(placed) == 1 and all(t.data_ptr() % huge_pages.ALIGN == 0 for t in big_on.values())
    small = on.transformer.blocks[0].norm_1.weight  # under MIN_BYTES: left where the loader put it
    assert _mapping(small.data_ptr())["lo"] not in placed
    ids = torch.tensor([[1, 2, 3, 400, 5]])
    with torch.inference_mode():
        assert torch.equal(on(ids).logits, off(ids).logits)


@pytest.mark.skipif(not huge_pages.thp_available(), reason="this kernel gives no transparent huge pages (THP never)")
def test_a_mapped_folder_stays_mapped_unless_all(tmp_path, monkeypatch):
    torch.manual_seed(3)
    src, saved = tmp_path / "float", tmp_path / "int8"
    mpt_lite.MptForCausalLM(_cfg(d_model=256, vocab_size=512)).eval().save_pretrained(src)
    mpt_lite.MptForCausalLM.from_pretrained(src, bits=8).save_pretrained(saved)
    name = "transformer.blocks.0.ffn.up_proj.weight"
    monkeypatch.setenv("MPT_LITE_HUGE_PAGES", "auto")
    mapped = mpt_lite.MptForCausalLM.from_pretrained(saved)
    where = _mapping(dict(mapped.named_buffers())[name].data_ptr())["path"]
    assert where.endswith(".safetensors") and os.path.realpath(where).startswith(os.path.realpath(saved))
    monkeypatch.setenv("MPT_LITE_HUGE_PAGES", "all")
    copied = mpt_lite.MptForCausalLM.from_pretrained(saved)
    assert _mapping(dict(copied.named_buffers())[name].data_ptr())["path"] == ""
    ids = torch.tensor([[9, 8, 7, 300]])
    with torch.inference_mode():
        assert torch.equal(copied(ids).logits, mapped(ids).logits)
