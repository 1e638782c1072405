"""Quantized models: every head at int8 / nf4 / int4, weights-only simulation, save/reload,
bitsandbytes interoperability (dequantize both ways, checkpoints saved in its layout)."""
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import mpt_lite
from mpt_lite import ops
from mpt_lite.quant import QuantEmbedding, QuantLinear, quantized_modules

HEADS = [mpt_lite.MptModel, mpt_lite.MptForCausalLM, mpt_lite.MptForSequenceClassification,
         mpt_lite.MptForTokenClassification, mpt_lite.MptForQuestionAnswering]
MODES = [(8, None), (4, "nf4"), (4, "int4")]


def small_config(**kw):
    base = dict(d_model=64, n_heads=4, n_layers=2, vocab_size=97, max_seq_len=32, expansion_ratio=4,
                pad_token_id=0, num_labels=3)
    base.update(kw)
    return mpt_lite.MptConfig(**base)


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = mpt_lite.MptForCausalLM(small_config()).eval()
    folder = tmp_path_factory.mktemp("float")
    model.save_pretrained(folder)
    return folder


def load(cls, folder, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heads missing from a causal-LM checkpoint are initialised
        return cls.from_pretrained(folder, **kw)


def simulate(qmodel):
    """The float model whose weights are the dequantized codes (float32 activations)."""
    sim = type(qmodel)(qmodel.config).eval()
    qmods = quantized_modules(qmodel)
    state = {k: v for k, v in qmodel.state_dict().items() if not any(k.startswith(n + ".") for n in qmods)}
    for name, mod in qmods.items():
        state[f"{name}.weight"] = mod.dequantized()
        if getattr(mod, "bias", None) is not None:
            state[f"{name}.bias"] = mod.bias
    sim.load_state_dict(state, strict=True)
    return sim


def main_output(out):
    if hasattr(out, "start_logits"):
        return torch.cat([out.start_logits, out.end_logits], dim=-1)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def cosine(a, b):
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.mark.parametrize("bits,quant_type", MODES)
@pytest.mark.parametrize("cls", HEADS)
def test_every_head_matches_weights_only_simulation(float_ckpt, cls, bits, quant_type):
    q = load(cls, float_ckpt, bits=bits, quant_type=quant_type)
    blocks = q.transformer_model().blocks[0]
    assert isinstance(blocks.attn.Wqkv, QuantLinear) and isinstance(blocks.ffn.down_proj, QuantLinear)
    assert isinstance(q.transformer_model().wte, QuantEmbedding)
    ids = torch.randint(1, 97, (2, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    got = main_output(q(ids, attention_mask=mask))
    want = main_output(simulate(q)(ids, attention_mask=mask))
    assert got.shape == want.shape
    assert cosine(got, want) >= 0.999
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits,quant_type", MODES)
def test_quality_vs_unquantized(float_ckpt, bits, quant_type, capsys):
    ref = load(mpt_lite.MptForCausalLM, float_ckpt)
    q = load(mpt_lite.MptForCausalLM, float_ckpt, bits=bits, quant_type=quant_type)
    ids = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(2))
    a, b = q(ids).logits, ref(ids).logits
    cos = cosine(a, b)
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    with capsys.disabled():
        print(f"\n[quality] {quant_type or 'int8'}: logits cosine {cos:.5f}, top-1 agreement {top1:.3f} vs float32")
    assert cos >= {8: 0.999, 4: 0.95}[bits]


def test_decode_with_cache_and_generate(float_ckpt):
    q = load(mpt_lite.MptForCausalLM, float_ckpt, bits=4)
    ids = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(3))
    full = q(ids).logits[:, -1]
    past = q(ids[:, :-1], use_cache=True).past_key_values
    step = q(ids[:, -1:], past_key_values=past).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)
    out = q.generate(ids, max_new_tokens=3)
    assert out.shape == (1, 9)


def _saved_meta(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as sf:
        return json.loads(sf.metadata()["mpt_lite_quant"])


def _saved_state_in_row_layout(folder, model):
    """The tensors of a fresh save with every Linear the file holds in rows8 put back in the saved layouts of
    format versions 1-3 (by the plain-torch reference)."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    mods = quantized_modules(model)
    for name in _saved_meta(folder).get("rows8", []):
        if f"{name}.SCB" in state:
            state[f"{name}.weight"] = ops.ref_int8_from_rows8(state[f"{name}.weight"])
        elif f"{name}.weight_scales" in state:
            state[f"{name}.weight"], state[f"{name}.weight_scales"] = ops.ref_int4_from_rows8(
                state[f"{name}.weight"], state[f"{name}.weight_scales"])
        else:
            m = mods[name]
            state[f"{name}.weight"], state[f"{name}.weight_absmax"] = ops.ref_nf4_from_rows8(
                state[f"{name}.weight"], state[f"{name}.weight_absmax"], (m.rows, m.cols), m.blocksize)
    return state


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("bits,quant_type,embedding_bits",
                         [(8, None, None), (4, "nf4", None), (4, "nf4", 4), (4, "int4", None), (4, "int4", 4),
                          (4, "int4", 6), (4, "nf4", 6)])
def test_save_reload_round_trips_exactly(float_ckpt, tmp_path, bits, quant_type, embedding_bits):
    q = load(mpt_lite.MptForCausalLM, float_ckpt, bits=bits, quant_type=quant_type, embedding_bits=embedding_bits)
    q.save_pretrained(tmp_path)
    meta = _saved_meta(tmp_path)
    fmt = quant_type or "int8"
    emb = {None: "int8", 6: "int6"}.get(embedding_bits, fmt)
    assert {k: meta[k] for k in ("format", "version", "blocksize", "group_size")} == \
        {"format": fmt, "version": 8 if emb == "int6" else 6, "blocksize": 64, "group_size": 32}
    # Linears are saved as held: in the rows8 layout where this machine's kernels read it
    held = [n for n, m in quantized_modules(q).items() if m.rows8]
    assert meta["rows8"] == sorted(held)
    assert bool(held) == ops.rows8_preferred(8, fmt, q.transformer.blocks[0].attn.Wqkv.cols)
    assert meta["formats"]["transformer.wte"] == emb
    assert meta["formats"]["transformer.blocks.1.ffn.up_proj"] == fmt
    r = mpt_lite.MptForCausalLM.from_pretrained(tmp_path)  # no bits: reloaded as saved, no quantizing
    assert r.transformer.wte.quant_type == emb and r.transformer.blocks[0].attn.Wqkv.quant_type == fmt
    assert _same_weights(q, r)
    assert "lm_head.weight" not in r.state_dict()  # the tied matrix is stored once
    ids = torch.randint(0, 97, (1, 7))
    assert torch.equal(q(ids).logits, r(ids).logits)
    with pytest.raises(ValueError, match="int4|nf4|int8"):
        other = "int4" if quant_type == "nf4" else "nf4"
        mpt_lite.MptForCausalLM.from_pretrained(tmp_path, bits=4, quant_type=other if bits == 4 else "nf4")
    # bits alone (load()'s default is 4) loads the folder as saved: silently for a 4-bit folder, with a warning
    # for int8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = mpt_lite.load(tmp_path)
    assert [str(w.message) for w in caught if "as saved" in str(w.message)] == \
        ([] if bits == 4 else [f"{tmp_path} holds int8 weights; loading them as saved, not at bits=4 (quantizing "
                                "them again would lose precision)"])
    assert again.transformer.blocks[0].attn.Wqkv.quant_type == fmt and torch.equal(again(ids).logits, q(ids).logits)
    if bits == 4:  # the embedding as saved, not as embedding_bits would make it
        with pytest.raises(ValueError, match="embedding"):
            mpt_lite.MptForCausalLM.from_pretrained(tmp_path, embedding_bits=8 if embedding_bits else 4)
        if embedding_bits == 6:
            assert mpt_lite.MptForCausalLM.from_pretrained(tmp_path, embedding_bits=6).transformer.wte.quant_type == "int6"


@pytest.mark.parametrize("quant_type", ["nf4", "int4"])
def test_reads_version_1_files(float_ckpt, tmp_path, quant_type):
    """Files saved before per-tensor formats: one format for every module, the embedding included."""
    q = load(mpt_lite.MptForCausalLM, float_ckpt, bits=4, quant_type=quant_type, embedding_bits=4)
    q.save_pretrained(tmp_path)
    state = _saved_state_in_row_layout(tmp_path, q)
    state = {k: v.float() if k.endswith("weight_scales") else v for k, v in state.items()}  # fp32 then
    v1 = {"format": quant_type, "version": 1, "blocksize": 64, "group_size": 32}
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt", "mpt_lite_quant": json.dumps(v1)})
    r = mpt_lite.MptForCausalLM.from_pretrained(tmp_path)
    assert r.transformer.wte.quant_type == quant_type
    assert _same_weights(q, r)


@pytest.mark.parametrize("quant_type", ["nf4", "int4"])
def test_reads_version_4_rows8_files(float_ckpt, tmp_path, monkeypatch, quant_type):
    """Format version 4 stored rows8 Linears with their 8-row sets one after another (set n8's group g at unit
    n8 * G + g, no 4-set interleave). Built by hand from the row layout of a fresh save; they load to the same
    weights on any machine."""
    q = load(mpt_lite.MptForCausalLM, float_ckpt, bits=4, quant_type=quant_type)
    q.save_pretrained(tmp_path)
    state = _saved_state_in_row_layout(tmp_path, q)
    mods = quantized_modules(q)
    names = [n for n, m in mods.items() if isinstance(m, QuantLinear) and m.rows % 8 == 0]
    assert names
    for name in names:
        N, K = mods[name].rows, mods[name].cols
        if quant_type == "int4":
            p, sc = state[f"{name}.weight"], state[f"{name}.weight_scales"]
            G = sc.shape[1]
            state[f"{name}.weight"] = p.reshape(N // 8, 8, G, 4, 4).permute(0, 2, 3, 1, 4).contiguous().reshape(p.shape)
            state[f"{name}.weight_scales"] = sc.reshape(N // 8, 8, G).permute(0, 2, 1).contiguous().reshape(sc.shape)
        else:  # bitsandbytes order: element n*K + k in byte (n*K + k) / 2, the high nibble when even
            p, am = state[f"{name}.weight"], state[f"{name}.weight_absmax"]
            codes = torch.stack([p >> 4, p & 15], dim=-1).reshape(N, K // 32, 2, 16)
            byte = codes[:, :, 0] | (codes[:, :, 1] << 4)  # [N, G, 16]: k in the low, k + 16 in the high nibble
            state[f"{name}.weight"] = byte.reshape(N // 8, 8, K // 32, 4, 4).permute(0, 2, 3, 1, 4).contiguous().reshape(p.shape)
            C = am.numel() // N
            state[f"{name}.weight_absmax"] = am.reshape(N // 8, 8, C).permute(0, 2, 1).contiguous().reshape(am.shape)
    meta = _saved_meta(tmp_path)
    meta["version"], meta["rows8"] = 4, sorted(names)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt", "mpt_lite_quant": json.dumps(meta)})
    for rows8 in ("0", "1"):  # a machine that reads the row layout, one that holds rows8
        monkeypatch.setenv("MPT_LITE_ROWS8", rows8)
        r = mpt_lite.MptForCausalLM.from_pretrained(tmp_path)
        assert _same_weights(q, r)


def test_reads_version_2_int4_files_with_float32_scales(float_ckpt, tmp_path):
    """Format version 2 stored int4 group scales in float32 (5.0 bits per weight). Built by hand:
    the codes of a fresh save with float32 scales that half cannot hold. They load with the codes
    unchanged and each scale rounded to half; the model then computes what its own dequantized
    weights say, within 2^-11 (relative) of the float32-scale weights."""
    q = load(mpt_lite.MptForCausalLM, float_ckpt, bits=4, quant_type="int4")
    q.save_pretrained(tmp_path)
    state = _saved_state_in_row_layout(tmp_path, q)
    gen = torch.Generator().manual_seed(3)
    old = {}
    for k, v in state.items():
        if k.endswith("weight_scales"):
            assert v.dtype == torch.float16
            jitter = 1 + (torch.rand(v.shape, generator=gen) - 0.5) * 2.0 ** -11  # off the half grid
            old[k] = v.float() * jitter
    assert any(not torch.equal(ops.int4_half_scales(t).float(), t) for t in old.values())
    meta = _saved_meta(tmp_path)
    meta["version"] = 2
    del meta["rows8"]
    save_file({**state, **old}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt", "mpt_lite_quant": json.dumps(meta)})
    r = mpt_lite.MptForCausalLM.from_pretrained(tmp_path)
    rs = r.state_dict()
    for k, t in old.items():
        assert rs[k].dtype == torch.float16
        assert torch.equal(rs[k], ops.int4_half_scales(t))  # each fp32 scale rounded to nearest half
        assert torch.equal(rs[k.replace("weight_scales", "weight")], state[k.replace("weight_scales", "weight")])
    for name, mod in quantized_modules(r).items():
        if mod.quant_type != "int4":
            continue
        codes = mod.codes()
        w16 = ops.ref_dequantize_int4(codes["weight"], codes["weight_scales"], mod.cols)
        w32 = ops.ref_dequantize_int4(codes["weight"], old[f"{name}.weight_scales"], mod.cols)
        assert bool(((w16 - w32).abs() <= w32.abs() * 2.0 ** -11).all())
    ids = torch.randint(0, 97, (1, 20), generator=gen)  # 20 rows: float activations, as simulate
    with torch.no_grad():
        torch.testing.assert_close(r(ids).logits, simulate(r)(ids).logits, rtol=1e-4, atol=1e-4)
    # a file that claims version 3 but holds float32 int4 scales is an error, not a silent conversion
    meta["version"] = 3
    save_file({**state, **old}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt", "mpt_lite_quant": json.dumps(meta)})
    with pytest.raises(TypeError, match="weight_scales"):
        mpt_lite.MptForCausalLM.from_pretrained(tmp_path)


def test_embedding_bits(float_ckpt):
    for quant_type in ("int4", "nf4"):
        m = load(mpt_lite.MptForCausalLM, float_ckpt, bits=4, quant_type=quant_type)
        assert m.transformer.wte.quant_type == "int8" and m.transformer.blocks[0].ffn.up_proj.quant_type == quant_type
        m4 = mpt_lite.load(float_ckpt, quant_type=quant_type, embedding_bits=4)
        assert m4.transformer.wte.quant_type == quant_type
        assert load(mpt_lite.MptForCausalLM, float_ckpt, bits=4, quant_type=quant_type,
                    embedding_bits=8).transformer.wte.quant_type == "int8"
        m6 = mpt_lite.load(float_ckpt, quant_type=quant_type, embedding_bits=6)
        assert m6.transformer.wte.quant_type == "int6" and m6.transformer.blocks[0].ffn.up_proj.quant_type == quant_type
    assert mpt_lite.load(float_ckpt, bits=8).transformer.wte.quant_type == "int8"
    for bad, match in [(dict(bits=4, embedding_bits=5), "4, 6 or 8"), (dict(bits=4, embedding_bits=True), "4, 6 or 8"),
                       (dict(bits=4, embedding_bits="4"), "4, 6 or 8"), (dict(bits=8, embedding_bits=8), "bits=4"),
                       (dict(bits=8, embedding_bits=6), "bits=4"), (dict(bits=None, embedding_bits=4), "bits=4")]:
        with pytest.raises(ValueError, match=match):
            mpt_lite.MptForCausalLM.from_pretrained(float_ckpt, **bad)


def test_untied_lm_head_follows_the_embedding_format(tmp_path):
    torch.manual_seed(0)
    src = mpt_lite.MptForCausalLM(small_config(tie_word_embeddings=False)).eval()
    src.save_pretrained(tmp_path)
    q = mpt_lite.MptForCausalLM.from_pretrained(tmp_path, bits=4)
    assert q.lm_head.quant_type == "int8" and q.transformer.wte.quant_type == "int8"
    ids = torch.randint(0, 97, (1, 8))
    assert cosine(q(ids).logits, simulate(q)(ids).logits) >= 0.999


def test_bad_bits_and_quant_type(float_ckpt):
    with pytest.raises(ValueError, match="3"):
        mpt_lite.MptForCausalLM.from_pretrained(float_ckpt, bits=3)
    with pytest.raises(ValueError, match="fp4"):
        mpt_lite.MptForCausalLM.from_pretrained(float_ckpt, bits=4, quant_type="fp4")
    with pytest.raises(ValueError, match="quant_type"):
        mpt_lite.MptForCausalLM.from_pretrained(float_ckpt, quant_type="nf4")


def test_bits_4_defaults_to_int4_with_an_int8_embedding(float_ckpt):
    for m in (mpt_lite.load(float_ckpt), mpt_lite.MptForCausalLM.from_pretrained(float_ckpt, bits=4)):
        assert m.transformer.blocks[0].attn.Wqkv.quant_type == "int4"
        assert m.transformer.wte.quant_type == "int8"


# ---- bitsandbytes interoperability ----

bnb_f = pytest.importorskip("bitsandbytes.functional")


@pytest.mark.parametrize("shape", [(64, 64), (37, 48), (13, 100), (5, 7)])
def test_nf4_dequantize_agrees_with_bitsandbytes_both_ways(shape):
    w = torch.randn(*shape)
    # bitsandbytes bytes -> mpt_lite. The oracle works on the flattened weight: bitsandbytes 0.50.2's
    # CPU dequantize_4bit is wrong for 2-D states whose row length is a multiple of 16 but not of 64.
    packed, state = bnb_f.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    packed1, state1 = bnb_f.quantize_4bit(w.reshape(-1), blocksize=64, quant_type="nf4", compress_statistics=False)
    assert torch.equal(packed, packed1) and torch.equal(state.absmax, state1.absmax)
    theirs = bnb_f.dequantize_4bit(packed1, state1).reshape(shape)
    ours = ops.dequantize_nf4(packed.reshape(-1), state.absmax, shape)
    assert torch.equal(ours, theirs)
    # mpt_lite bytes -> bitsandbytes
    mp, ma = ops.quantize_nf4(w)
    state1.absmax = ma
    theirs = bnb_f.dequantize_4bit(mp.reshape(-1, 1), state1).reshape(shape)
    assert torch.equal(ops.dequantize_nf4(mp, ma, shape), theirs)
    def codes(p):
        return torch.stack([p.reshape(-1) >> 4, p.reshape(-1) & 15], 1).reshape(-1)[: w.numel()]

    assert (codes(mp) == codes(packed)).float().mean().item() > 0.99  # all but float ties at midpoints


def test_int8_dequantize_agrees_with_bitsandbytes_both_ways():
    w = torch.randn(33, 70)
    cb, scb, _ = bnb_f.int8_vectorwise_quant(w.clone())
    assert torch.equal(ops.dequantize_int8(cb, scb), bnb_f.int8_vectorwise_dequant(cb, scb))
    mcb, mscb = ops.quantize_int8(w)
    assert torch.equal(mcb, cb) and torch.equal(mscb, scb)
    assert torch.equal(ops.dequantize_int8(mcb, mscb), bnb_f.int8_vectorwise_dequant(mcb, mscb))


def _bnb_checkpoint(src, folder, kind, nested=False):
    """A checkpoint in the layout transformers + bitsandbytes save (Linear4bit / Linear8bitLt)."""
    state = {}
    for key, t in src.state_dict().items():
        is_linear = key.endswith(".weight") and t.dim() == 2 and ".blocks." in "." + key
        if not is_linear:
            state[key] = t.to(torch.bfloat16)  # norms, biases and wte stay float, as in transformers
            continue
        p = key[: -len(".weight")]
        if kind == "int8":
            cb, scb, _ = bnb_f.int8_vectorwise_quant(t.clone())
            state[key], state[f"{p}.SCB"] = cb, scb
            state[f"{p}.weight_format"] = torch.tensor([0], dtype=torch.uint8)
        else:
            packed, qs = bnb_f.quantize_4bit(t, blocksize=64, quant_type="nf4", compress_statistics=nested)
            for name, v in qs.as_dict(packed=True).items():
                state[f"{key}.{name}"] = v
            state[key] = packed
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    (folder / "config.json").write_text(src.config.to_json_string())


@pytest.mark.parametrize("kind,nested", [("int8", False), ("nf4", False), ("nf4", True)])
def test_loads_a_bitsandbytes_checkpoint(float_ckpt, tmp_path, kind, nested):
    src = load(mpt_lite.MptForCausalLM, float_ckpt)
    _bnb_checkpoint(src, tmp_path, kind, nested)
    q = mpt_lite.MptForCausalLM.from_pretrained(tmp_path)
    lin = q.transformer.blocks[1].ffn.up_proj
    assert lin.quant_type == kind
    w = src.transformer.blocks[1].ffn.up_proj.weight
    if kind == "int8":
        want = bnb_f.int8_vectorwise_dequant(*bnb_f.int8_vectorwise_quant(w.clone())[:2])
    else:
        packed, qs = bnb_f.quantize_4bit(w.reshape(-1), blocksize=64, quant_type="nf4", compress_statistics=nested)
        want = bnb_f.dequantize_4bit(packed, qs).reshape(w.shape)
    torch.testing.assert_close(lin.dequantized(), want, rtol=0, atol=1e-6 if nested else 0)
    ids = torch.randint(0, 97, (1, 8))
    assert cosine(q(ids).logits, simulate(q)(ids).logits) >= 0.999
    assert cosine(q(ids).logits, src(ids).logits) >= 0.95


@pytest.mark.parametrize("quant_type", ["int8", "nf4", "int4"])
@pytest.mark.parametrize("shape", [(3000, 700), (4100, 257), (5, 7)])
def test_quantizing_in_slabs_equals_whole(quant_type, shape):
    w = torch.randn(*shape).to(torch.bfloat16)
    lin = QuantLinear(shape[1], shape[0], bias=False, quant_type=quant_type)
    lin.quantize_from(w)
    from mpt_lite.quant import quantize

    whole = quantize(quant_type, w.float())
    for name, t in whole.items():
        assert torch.equal(lin.codes()[name], t)  # codes() in the saved (row) layout, whatever is held


# ---- every checkpoint layout of the foundation issue, quantized while loading ----

@pytest.mark.parametrize("layout", ["bin_shards", "safetensors_shards", "single_bin", "single_safetensors"])
@pytest.mark.parametrize("bits,quant_type", MODES)
def test_quantizes_every_checkpoint_layout(tmp_path, layout, bits, quant_type):
    import checkpoints as ck

    cfg = ck.tiny_config()
    state = ck.random_state(cfg)
    writer = {"bin_shards": ck.write_bin_shards, "safetensors_shards": ck.write_safetensors_shards,
              "single_bin": ck.write_single_bin, "single_safetensors": ck.write_single_safetensors}[layout]
    writer(tmp_path, cfg, state)
    q = mpt_lite.MptForCausalLM.from_pretrained(tmp_path, bits=bits, quant_type=quant_type)
    ref = mpt_lite.MptForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(4))
    assert cosine(q(ids).logits, simulate(q)(ids).logits) >= 0.999
    assert cosine(q(ids).logits, ref(ids).logits) >= 0.95
