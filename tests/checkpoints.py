"""Tiny checkpoints on disk in the exact layouts of the real hub repositories."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

# What mosaicml/mpt-7b's config.json carries beyond the architecture (must load without complaint).
MPT7B_EXTRA = {
    "architectures": ["MPTForCausalLM"],
    "auto_map": {"AutoConfig": "configuration_mpt.MPTConfig", "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"},
    "init_config": {"emb_init_std": None, "emb_init_uniform_lim": None, "fan_mode": "fan_in", "init_div_is_residual": True,
                    "init_gain": 0, "init_nonlinearity": "relu", "init_std": 0.02, "name": "kaiming_normal_",
                    "verbose": 0},
    "tokenizer_name": "EleutherAI/gpt-neox-20b",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.28.1",
    "model_type": "mpt",
    "learned_pos_emb": True,
    "logit_scale": None,
    "no_bias": True,
    "norm_type": "low_precision_layernorm",
    "use_cache": False,
    "verbose": 0,
    "embedding_fraction": 1.0,
    "emb_pdrop": 0,
    "resid_pdrop": 0,
    "init_device": "cpu",
}


def tiny_config(**over) -> dict:
    cfg = {"d_model": 48, "n_heads": 6, "n_layers": 2, "expansion_ratio": 4, "max_seq_len": 64, "vocab_size": 97,
           "attn_config": {"alibi": True, "alibi_bias_max": 8, "attn_impl": "torch", "attn_pdrop": 0,
                           "attn_type": "multihead_attention", "attn_uses_sequence_id": False, "clip_qkv": None,
                           "prefix_lm": False, "qk_ln": False, "softmax_scale": None}}
    attn = over.pop("attn_config", {})
    cfg.update(over)
    cfg["attn_config"].update(attn)
    return cfg


def random_state(cfg: dict, seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    """The tensors of a hub MPT causal LM (no lm_head, tied to wte), keyed as on the hub."""
    g = torch.Generator().manual_seed(seed)
    d, L = cfg["d_model"], cfg["n_layers"]
    a = cfg.get("attn_config", {})
    hd = d // cfg["n_heads"]
    kind = a.get("attn_type", "multihead_attention")
    kv = cfg["n_heads"] if kind == "multihead_attention" else 1 if kind == "multiquery_attention" else a["kv_n_heads"]
    hidden = int(d * cfg.get("expansion_ratio", 4))
    bias = not cfg.get("no_bias", True)

    def w(*shape):
        return torch.randn(*shape, generator=g) * std

    def ln(n, name, out):
        out[name + ".weight"] = 1 + w(n) * 0.5
        if bias:
            out[name + ".bias"] = w(n)

    s: dict[str, torch.Tensor] = {"transformer.wte.weight": w(cfg["vocab_size"], d)}
    if not a.get("alibi", True) and cfg.get("learned_pos_emb", True):
        s["transformer.wpe.weight"] = w(cfg["max_seq_len"], d)
    for i in range(L):
        p = f"transformer.blocks.{i}."
        ln(d, p + "norm_1", s)
        s[p + "attn.Wqkv.weight"] = w(d + 2 * kv * hd, d)
        if a.get("qk_ln"):
            ln(d, p + "attn.q_ln", s)
            ln(kv * hd, p + "attn.k_ln", s)
        s[p + "attn.out_proj.weight"] = w(d, d)
        ln(d, p + "norm_2", s)
        s[p + "ffn.up_proj.weight"] = w(hidden, d)
        s[p + "ffn.down_proj.weight"] = w(d, hidden)
        if bias:
            for n, size in (("attn.Wqkv", d + 2 * kv * hd), ("attn.out_proj", d), ("ffn.up_proj", hidden),
                            ("ffn.down_proj", d)):
                s[p + n + ".bias"] = w(size)
    ln(d, "transformer.norm_f", s)
    return s


def write_config(folder: Path, cfg: dict, extra: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = dict(MPT7B_EXTRA)
    data.update(extra or {})
    data.update(cfg)
    (folder / "config.json").write_text(json.dumps(data, indent=2))


def _shards(state: dict, n: int) -> list[dict]:
    keys = list(state)
    per = math.ceil(len(keys) / n)
    return [{k: state[k] for k in keys[i * per:(i + 1) * per]} for i in range(n)]


def write_bin_shards(folder: Path, cfg: dict, state: dict, n_shards: int = 2, dtype=torch.bfloat16) -> None:
    """mosaicml/mpt-7b: pytorch_model-0000X-of-0000Y.bin + pytorch_model.bin.index.json, bf16, no lm_head."""
    write_config(folder, cfg)
    weight_map = {}
    for i, part in enumerate(_shards(state, n_shards), start=1):
        name = f"pytorch_model-{i:05d}-of-{n_shards:05d}.bin"
        torch.save({k: v.to(dtype) for k, v in part.items()}, folder / name)
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_safetensors_shards(folder: Path, cfg: dict, state: dict, n_shards: int = 2, dtype=torch.bfloat16) -> None:
    from safetensors.torch import save_file

    write_config(folder, cfg)
    weight_map = {}
    for i, part in enumerate(_shards(state, n_shards), start=1):
        name = f"model-{i:05d}-of-{n_shards:05d}.safetensors"
        save_file({k: v.to(dtype).contiguous() for k, v in part.items()}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_single_bin(folder: Path, cfg: dict, state: dict, dtype=torch.float32) -> None:
    """replit/replit-code-v1-3b: one fp32 pytorch_model.bin."""
    write_config(folder, cfg, {"architectures": ["MPTForCausalLM"], "torch_dtype": "float32"})
    torch.save({k: v.to(dtype) for k, v in state.items()}, folder / "pytorch_model.bin")


def write_single_safetensors(folder: Path, cfg: dict, state: dict, dtype=torch.float32) -> None:
    from safetensors.torch import save_file

    write_config(folder, cfg)
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))


def write_hf_cache(hf_home: Path, repo_id: str, writer, cfg: dict, state: dict) -> Path:
    """An HF cache entry (hub/models--owner--name/{refs/main, snapshots/<sha>/...}) as huggingface_hub lays it."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / sha
    writer(snap, cfg, state)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return snap


def load_hf(cls_name: str, state: dict, cfg: dict):
    """The transformers model (the oracle) with exactly these weights, float32, eval mode."""
    import transformers

    config = transformers.MptConfig(**cfg)
    model = getattr(transformers, cls_name)(config).eval()
    own = {k: v for k, v in state.items()}
    if cls_name == "MptModel":
        own = {k[len("transformer."):]: v for k, v in own.items() if k.startswith("transformer.")}
    if cls_name == "MptForCausalLM":
        own["lm_head.weight"] = state["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(own, strict=False)
    assert not unexpected, unexpected
    return model, missing


def random_causal_lm(seed: int = 0, **config):
    """A small randomly initialised mpt_lite MptForCausalLM (weights large enough to be decisive)."""
    from mpt_lite import MptConfig, MptForCausalLM

    torch.manual_seed(seed)
    args = dict(d_model=64, n_heads=4, n_layers=2, expansion_ratio=2, initializer_range=0.3)
    args.update(config)
    return MptForCausalLM(MptConfig(**args)).eval()


def quantized(model, blocks: str | None, embedding: str | None):
    """The model with every block Linear in `blocks` and the tied embedding in `embedding` (None:
    float32), quantized from its own float weights."""
    import copy

    from mpt_lite.quant import QuantEmbedding, QuantLinear

    model = copy.deepcopy(model)
    if blocks is not None:
        for b in model.transformer.blocks:
            for owner, name in ((b.attn, "Wqkv"), (b.attn, "out_proj"), (b.ffn, "up_proj"), (b.ffn, "down_proj")):
                setattr(owner, name, QuantLinear.from_linear(getattr(owner, name), quant_type=blocks))
    if embedding is not None:
        wte = model.transformer.wte
        q = QuantEmbedding(wte.num_embeddings, wte.embedding_dim, quant_type=embedding)
        q.quantize_from(wte.weight.detach())
        model.transformer.wte = q
    return model.eval()


# Config variants the native step computes (or, untied_float_lm_head, hands to the torch path in part):
# tests/test_native_step.py and tests/test_native_forward.py run each.
STEP_CONFIGS = {
    "mha": dict(),
    "gqa_clip_biases_logit_scale": dict(attn_config={"attn_type": "grouped_query_attention", "kv_n_heads": 2,
                                                     "clip_qkv": 0.8}, no_bias=False, logit_scale=0.5),
    "mqa_no_alibi_no_wpe": dict(attn_config={"attn_type": "multiquery_attention", "alibi": False},
                                learned_pos_emb=False),
    "untied_float_lm_head": dict(tie_word_embeddings=False),
    "alibi4_6heads_softmax_scale": dict(d_model=48, n_heads=6, attn_config={"alibi_bias_max": 4,
                                                                             "softmax_scale": 0.3}),
}


def successor_lm(chain: list[int], vocab_size: int):
    """A one-block mpt_lite MptForCausalLM whose greedy next token after chain[i] is chain[i + 1],
    by wide margins (a chain whose last token is its first repeats itself). Each token of the chain
    owns one dimension: wte puts a token on its dimension, the block's FFN moves it to its
    successor's dimension, and the tied lm_head reads that dimension out. Attention is zeroed."""
    from mpt_lite import MptConfig, MptForCausalLM

    dim = {t: i for i, t in enumerate(dict.fromkeys(chain))}
    d = 4 * (len(dim) // 4 + 1)
    model = MptForCausalLM(MptConfig(d_model=d, n_heads=4, n_layers=1, expansion_ratio=1, max_seq_len=1024,
                                     vocab_size=vocab_size, no_bias=True))
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for name in state:
        if "norm" in name:
            state[name].fill_(1.0)
    wte, up, down = (state["transformer.wte.weight"], state["transformer.blocks.0.ffn.up_proj.weight"],
                     state["transformer.blocks.0.ffn.down_proj.weight"])
    for t, i in dim.items():
        wte[t, i] = 4.0
    for a, b in zip(chain, chain[1:]):
        up[dim[a], dim[a]] = 4.0     # hidden unit dim[a] fires for token a only
        down[dim[b], dim[a]] = 1.0   # and writes token b's dimension
    model.load_state_dict(state)
    return model.eval()
