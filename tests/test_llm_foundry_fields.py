"""Fields transformers ignores but llm-foundry (MosaicML's reference) honours, checked against a
plain-torch re-derivation of llm-foundry's math written here, independent of mpt_lite's layers."""
import math

import pytest
import torch

import mpt_lite
from checkpoints import random_state, tiny_config, write_single_safetensors

TOL = 1e-4


def foundry_slopes(n_heads, bias_max):
    n = 2 ** math.ceil(math.log2(n_heads))
    slopes = [1.0 / 2 ** ((i + 1) * bias_max / n) for i in range(n)]
    if n != n_heads:
        slopes = slopes[1::2] + slopes[::2]
    return torch.tensor(slopes[:n_heads])


def norm(x, s, name, kind, eps=1e-5):
    w, b = s[name + ".weight"], s.get(name + ".bias")
    if "rms" in kind:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + eps) * w
    return y + b if b is not None else y


def lin(x, s, name):
    y = x @ s[name + ".weight"].T
    return y + s[name + ".bias"] if name + ".bias" in s else y


def foundry_logits(s, cfg, ids, mask):
    a = cfg["attn_config"]
    d, H = cfg["d_model"], cfg["n_heads"]
    hd = d // H
    kind = a.get("attn_type", "multihead_attention")
    KV = H if kind == "multihead_attention" else 1 if kind == "multiquery_attention" else a["kv_n_heads"]
    nt = cfg.get("norm_type", "low_precision_layernorm")
    B, T = ids.shape
    x = s["transformer.wte.weight"][ids]
    if not a.get("alibi", True) and cfg.get("learned_pos_emb", True):
        pos = torch.arange(T).expand(B, T) - torch.cumsum(1 - mask, dim=1)
        x = x + s["transformer.wpe.weight"][pos.clamp(min=0)]
    qi = torch.arange(T).view(T, 1)
    kj = torch.arange(T).view(1, T)
    allowed = (kj <= qi).view(1, 1, T, T) & mask.bool().view(B, 1, 1, T)
    scale = a.get("softmax_scale") or 1 / math.sqrt(hd)
    for layer in range(cfg["n_layers"]):
        p = f"transformer.blocks.{layer}."
        h = norm(x, s, p + "norm_1", nt)
        qkv = lin(h, s, p + "attn.Wqkv")
        if a.get("clip_qkv"):
            qkv = qkv.clamp(-a["clip_qkv"], a["clip_qkv"])
        q, k, v = qkv[..., :d], qkv[..., d:d + KV * hd], qkv[..., d + KV * hd:]
        if a.get("qk_ln"):
            q, k = norm(q, s, p + "attn.q_ln", nt), norm(k, s, p + "attn.k_ln", nt)
        q = q.view(B, T, H, hd)
        k = k.view(B, T, KV, hd).repeat_interleave(H // KV, dim=2)
        v = v.view(B, T, KV, hd).repeat_interleave(H // KV, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
        if a.get("alibi", True):
            slopes = foundry_slopes(H, a.get("alibi_bias_max", 8))
            scores = scores + slopes.view(1, H, 1, 1) * (kj - qi).view(1, 1, T, T)
        scores = scores.masked_fill(~allowed, -1e30)  # finite: fully padded rows stay finite
        ctx = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, -1), v).reshape(B, T, d)
        x = x + lin(ctx, s, p + "attn.out_proj")
        h = norm(x, s, p + "norm_2", nt)
        x = x + lin(torch.nn.functional.gelu(lin(h, s, p + "ffn.up_proj")), s, p + "ffn.down_proj")
    x = norm(x, s, "transformer.norm_f", nt)
    logits = x @ s["transformer.wte.weight"].T
    ls = cfg.get("logit_scale")
    if ls is not None:
        logits = logits * (1 / math.sqrt(d) if ls == "inv_sqrt_d_model" else ls)
    return logits


VARIANTS = {
    "alibi_bias_max_4": tiny_config(attn_config={"alibi_bias_max": 4}),
    "alibi_bias_max_16_5heads": tiny_config(d_model=40, n_heads=5, attn_config={"alibi_bias_max": 16}),
    "expansion_ratio_3": tiny_config(expansion_ratio=3),
    "logit_scale_number": tiny_config(logit_scale=0.37),
    "logit_scale_inv_sqrt": tiny_config(logit_scale="inv_sqrt_d_model"),
    "qk_ln": tiny_config(attn_config={"qk_ln": True}),
    "biases": tiny_config(no_bias=False, attn_config={"qk_ln": True}),
    "multiquery": tiny_config(attn_config={"attn_type": "multiquery_attention"}),
    "grouped_query": tiny_config(attn_config={"attn_type": "grouped_query_attention", "kv_n_heads": 2,
                                              "clip_qkv": 0.8}),
    "learned_pos_emb_no_alibi": tiny_config(learned_pos_emb=True, attn_config={"alibi": False}),
    "rmsnorm": tiny_config(norm_type="rmsnorm"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_llm_foundry_math(name, tmp_path):
    cfg = VARIANTS[name]
    state = random_state(cfg, seed=11)
    write_single_safetensors(tmp_path, cfg, state)
    model = mpt_lite.MptForCausalLM.from_pretrained(tmp_path)
    g = torch.Generator().manual_seed(12)
    ids = torch.randint(0, cfg["vocab_size"], (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, 8:] = 0  # right padding
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
    ref = foundry_logits(state, cfg, ids, mask)
    real = mask.bool()
    diff = (ours[real] - ref[real]).abs().max().item()
    assert diff <= TOL, f"{name}: max abs difference {diff:.2e}"
    # and incrementally, one token at a time after a prefill
    with torch.no_grad():
        out = model(input_ids=ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
        step = model(input_ids=ids[:, 6:7], attention_mask=mask[:, :7], past_key_values=out.past_key_values)
    assert (step.logits[:, 0] - ref[:, 6]).abs().max().item() <= TOL


def test_contexts_past_max_seq_len_when_raised(tmp_path):
    cfg = tiny_config(max_seq_len=16)
    state = random_state(cfg, seed=13)
    write_single_safetensors(tmp_path, cfg, state)
    ids = torch.randint(0, cfg["vocab_size"], (1, 40), generator=torch.Generator().manual_seed(14))
    short = mpt_lite.MptForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="max_seq_len"):
        short(input_ids=ids)
    long = mpt_lite.MptForCausalLM.from_pretrained(tmp_path, max_seq_len=64)
    assert long.config.max_seq_len == 64
    with torch.no_grad():
        ours = long(input_ids=ids).logits
    ref = foundry_logits(state, cfg, ids, torch.ones_like(ids))
    assert (ours - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("field,value", [
    ("attn_config", {"prefix_lm": True}),
    ("attn_config", {"rope": True}),
    ("ffn_config", {"ffn_type": "mb_moe"}),
])
def test_fields_that_cannot_be_honoured_are_refused(tmp_path, field, value):
    cfg = tiny_config(**{field: value})
    write_single_safetensors(tmp_path, cfg, random_state(tiny_config(), seed=1))
    with pytest.raises(ValueError, match=next(iter(value))):
        mpt_lite.MptForCausalLM.from_pretrained(tmp_path)
