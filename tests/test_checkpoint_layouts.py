"""Loading tiny checkpoints laid out like the real hub repositories, compared with transformers."""
import json
import os
import time

import pytest
import torch

import mpt_lite
from subproc import run_python
from checkpoints import (load_hf, random_state, tiny_config, write_bin_shards, write_hf_cache,
                         write_safetensors_shards, write_single_bin, write_single_safetensors)

CFG = tiny_config(n_layers=3)
STATE = random_state(CFG, seed=21)
IDS = torch.randint(0, CFG["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(22))


def expected_logits(state):
    hf, _ = load_hf("MptForCausalLM", {k: v.float() for k, v in state.items()}, CFG)
    with torch.no_grad():
        return hf(input_ids=IDS).logits


def check(model, state, dtype_cast=torch.float32):
    cast = {k: v.to(dtype_cast).float() for k, v in state.items()}
    with torch.no_grad():
        diff = (model(input_ids=IDS).logits - expected_logits(cast)).abs().max().item()
    assert diff <= 1e-4, diff


def test_mpt7b_layout_bin_shards_bf16(tmp_path):
    write_bin_shards(tmp_path, CFG, STATE, n_shards=2, dtype=torch.bfloat16)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
                     "pytorch_model.bin.index.json"]
    index = json.loads((tmp_path / "pytorch_model.bin.index.json").read_text())
    assert len(index["weight_map"]) == 2 + 6 * CFG["n_layers"]  # 194 for mpt-7b's 32 layers
    assert "lm_head.weight" not in index["weight_map"] and "transformer.wpe.weight" not in index["weight_map"]
    model = mpt_lite.MptForCausalLM.from_pretrained(tmp_path)
    assert model.config.learned_pos_emb is True and model.transformer.wpe is None
    assert model.config.tokenizer_name == "EleutherAI/gpt-neox-20b"
    check(model, STATE, torch.bfloat16)


def test_mpt30b_style_seven_shards(tmp_path):
    write_bin_shards(tmp_path, CFG, STATE, n_shards=7, dtype=torch.bfloat16)
    assert len(list(tmp_path.glob("pytorch_model-*-of-00007.bin"))) == 7
    check(mpt_lite.MptForCausalLM.from_pretrained(tmp_path), STATE, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_sharded_safetensors(tmp_path, dtype):
    write_safetensors_shards(tmp_path, CFG, STATE, n_shards=3, dtype=dtype)
    check(mpt_lite.MptForCausalLM.from_pretrained(tmp_path), STATE, dtype)


def test_replit_style_single_fp32_bin(tmp_path):
    cfg = tiny_config(vocab_size=128)
    state = random_state(cfg, seed=5)
    write_single_bin(tmp_path, cfg, state)
    model = mpt_lite.MptForCausalLM.from_pretrained(tmp_path)
    hf, _ = load_hf("MptForCausalLM", state, cfg)
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        assert (model(input_ids=ids).logits - hf(input_ids=ids).logits).abs().max() <= 1e-4


def test_bf16_compute(tmp_path):
    write_single_safetensors(tmp_path, CFG, STATE)
    model = mpt_lite.MptForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(input_ids=IDS).logits.float()
    ref = expected_logits(STATE)
    cos = torch.nn.functional.cosine_similarity(logits.flatten(), ref.flatten(), dim=0)
    assert cos > 0.999


def test_tied_lm_head_saved_by_transformers(tmp_path):
    """transformers' checkpoints of MptForCausalLM may carry lm_head.weight beside wte: ignored, tied."""
    state = dict(STATE, **{"lm_head.weight": STATE["transformer.wte.weight"].clone()})
    write_single_safetensors(tmp_path, CFG, state)
    check(mpt_lite.MptForCausalLM.from_pretrained(tmp_path), STATE)


def test_save_and_reload(tmp_path):
    write_bin_shards(tmp_path / "src", CFG, STATE)
    model = mpt_lite.MptForCausalLM.from_pretrained(tmp_path / "src")
    model.save_pretrained(tmp_path / "dst")
    again = mpt_lite.MptForCausalLM.from_pretrained(tmp_path / "dst")
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, again(input_ids=IDS).logits)
    with pytest.raises(FileExistsError, match="pytorch_model"):
        model.save_pretrained(tmp_path / "src")  # would mix with another checkpoint's shards


def test_save_never_replaces_a_users_unrelated_files(tmp_path, monkeypatch):
    """A folder that is not an MPT checkpoint keeps its files: a save that would replace its config.json or
    model.safetensors is refused before anything is written; files a save does not write stay; an earlier
    MPT save is replaced; tokenizer.save_pretrained(d) then model.save_pretrained(d) works, as in
    transformers; an empty path does not mean the current folder."""
    model = mpt_lite.load(bits=None)  # with a tokenizer: a save writes its files too
    mine = {"config.json": '{"model_type": "llama", "hidden_size": 8}', "model.safetensors": "my weights",
            "notes.txt": "mine"}
    for name, text in mine.items():
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_text(text)
        (folder / "keep.txt").write_text("kept")
        if name == "notes.txt":
            model.save_pretrained(folder)  # nothing of the user's is in the way
            assert (folder / name).read_text() == text and (folder / "keep.txt").read_text() == "kept"
            continue
        with pytest.raises(FileExistsError, match=f"{name}.*not an MPT checkpoint"):
            model.save_pretrained(folder)
        assert sorted(p.name for p in folder.iterdir()) == sorted([name, "keep.txt"])
        assert (folder / name).read_text() == text
    with pytest.raises(FileExistsError, match="config.json"):
        model.config.save_pretrained(tmp_path / "config_json")
    assert (tmp_path / "config_json" / "config.json").read_text() == mine["config.json"]
    model.tokenizer.save_pretrained(tmp_path / "both")
    model.save_pretrained(tmp_path / "both")
    assert mpt_lite.load(tmp_path / "both", bits=None).tokenizer is not None
    model.save_pretrained(tmp_path / "notes_txt")  # saving again over its own earlier save
    model.config.save_pretrained(tmp_path / "notes_txt")
    monkeypatch.chdir(tmp_path / "notes_txt")
    for bad in ("", b""):
        with pytest.raises((ValueError, TypeError), match="save_directory"):
            model.save_pretrained(bad)
    with pytest.raises(ValueError, match="save_directory"):
        model.config.save_pretrained("")
    with pytest.raises(TypeError, match="save_directory"):
        model.save_pretrained(None)


def test_base_model_from_causal_lm_checkpoint_and_back(tmp_path):
    write_single_safetensors(tmp_path / "lm", CFG, STATE)
    base = mpt_lite.MptModel.from_pretrained(tmp_path / "lm")
    base.save_pretrained(tmp_path / "base")
    lm = mpt_lite.MptForCausalLM.from_pretrained(tmp_path / "base")
    check(lm, STATE)


HUB_LOAD = '''
import sys, time, torch, mpt_lite
from test_checkpoint_layouts import STATE, check
for name in ("mosaicml/mpt-7b", "mpt-7b"):
    check(mpt_lite.MptForCausalLM.from_pretrained(name), STATE, torch.bfloat16)
assert mpt_lite.MptConfig.from_pretrained("mpt-7b").n_layers == 3
t0 = time.monotonic()
try:
    mpt_lite.MptForCausalLM.from_pretrained("mpt-30b")
except OSError as e:
    assert "mosaicml/mpt-30b" in str(e) and time.monotonic() - t0 < 10, (e, time.monotonic() - t0)
    print("ok")
'''


def test_hub_id_and_alias_from_hf_cache(tmp_path):
    # huggingface_hub reads HF_HOME when imported, so the load runs in a fresh process
    write_hf_cache(tmp_path, "mosaicml/mpt-7b", write_bin_shards, CFG, STATE)
    env = dict(os.environ, HF_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    r = run_python(HUB_LOAD, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_offline_and_absent_without_hf_hub_offline_fails_fast(tmp_path):
    """No network here: with HF_HUB_OFFLINE unset the hub is tried, and the failure must be a clear error."""
    env = dict(os.environ, HF_HOME=str(tmp_path), HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_ETAG_TIMEOUT="3",
               HF_HUB_DOWNLOAD_TIMEOUT="3")
    env.pop("HF_HUB_OFFLINE", None)
    code = "import mpt_lite; mpt_lite.MptForCausalLM.from_pretrained('someone/not-cached-model')"
    r = run_python(code, env=env)
    assert r.returncode != 0
    assert any(line.startswith("OSError") and "someone/not-cached-model" in line for line in r.stderr.splitlines())


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = dict(STATE)
    del state["transformer.blocks.1.ffn.up_proj.weight"]
    write_single_safetensors(tmp_path / "a", CFG, state)
    with pytest.raises(KeyError, match=r"transformer\.blocks\.1\.ffn\.up_proj\.weight"):
        mpt_lite.MptForCausalLM.from_pretrained(tmp_path / "a")
    state = dict(STATE, **{"transformer.blocks.0.attn.extra.weight": torch.zeros(2)})
    write_single_safetensors(tmp_path / "b", CFG, state)
    with pytest.raises(KeyError, match=r"transformer\.blocks\.0\.attn\.extra\.weight"):
        mpt_lite.MptForCausalLM.from_pretrained(tmp_path / "b")


def test_shape_mismatch_is_named(tmp_path):
    write_single_safetensors(tmp_path, dict(CFG, vocab_size=CFG["vocab_size"] + 1), STATE)
    with pytest.raises(ValueError, match="transformer.wte.weight"):
        mpt_lite.MptForCausalLM.from_pretrained(tmp_path)


def test_new_head_on_a_causal_lm_checkpoint_warns(tmp_path):
    write_single_safetensors(tmp_path, CFG, STATE)
    with pytest.warns(UserWarning, match="score.weight"):
        model = mpt_lite.MptForSequenceClassification.from_pretrained(tmp_path, num_labels=4)
    assert model.score.weight.shape == (4, CFG["d_model"])


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        mpt_lite.MptForCausalLM.from_pretrained(tmp_path)
    write_bin_shards(tmp_path, CFG, STATE)
    (tmp_path / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_model-00002-of-00002.bin"):
        mpt_lite.MptForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        mpt_lite.MptForCausalLM.from_pretrained(str(tmp_path / "nope"))


CORRUPT = """
import sys, mpt_lite
try:
    mpt_lite.MptForCausalLM.from_pretrained(sys.argv[1])
except OSError as e:
    print("OSError:", e)
    sys.exit(3)
"""


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_or_truncated_weights_give_oserror(tmp_path, layout, damage):
    if layout == "safetensors":
        write_single_safetensors(tmp_path, CFG, STATE)
        f = tmp_path / "model.safetensors"
    else:
        write_single_bin(tmp_path, CFG, STATE)
        f = tmp_path / "pytorch_model.bin"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00\x13garbage" * 100)
    # in a subprocess: a crash (segfault) must show up as a failure, not take pytest down
    r = run_python(CORRUPT, str(tmp_path))
    assert r.returncode == 3, r.stderr[-2000:]
    assert f.name in r.stdout


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_bad_weights_name_their_tensor(tmp_path, bits):
    """A weight of the wrong shape, holding NaN, or of an integer dtype in a float checkpoint: every load, quantizing
    or not, names the tensor."""
    key = "transformer.blocks.0.attn.Wqkv.weight"
    for bad, err in ((STATE[key][:, : CFG["d_model"] // 2].contiguous(), ValueError),
                     (STATE[key].clone().index_fill_(0, torch.tensor([3]), float("nan")), ValueError),
                     (STATE[key].to(torch.int32), TypeError)):
        if bad.is_floating_point() and not bad.isfinite().all() and bits is None:
            continue  # float weights load as they are (a NaN is the checkpoint's own)
        folder = tmp_path / f"{bits}-{len(os.listdir(tmp_path))}"
        folder.mkdir()
        write_single_safetensors(folder, CFG, {**STATE, key: bad.float()})
        if not bad.is_floating_point():  # as the writer casts every tensor, store this one as it is
            from safetensors.torch import load_file, save_file

            tensors = load_file(str(folder / "model.safetensors"))
            save_file({**tensors, key: bad}, str(folder / "model.safetensors"))
        with pytest.raises(err, match=key.replace(".", r"\.")):
            mpt_lite.MptForCausalLM.from_pretrained(folder, bits=bits)
