"""Hub-layout MPT checkpoint -> GGUF (architecture "mpt") for llama.cpp, with the `gguf` package.

    python benchmarks/convert_gguf.py CHECKPOINT_DIR out-f16.gguf              # F16
    python benchmarks/convert_gguf.py CHECKPOINT_DIR out-q4_0.gguf --type q4_0 # F16, then llama.cpp's quantizer

Tensor names and metadata follow llama.cpp's convert_hf_to_gguf.py (class MPTModel) and
gguf.constants (MODEL_ARCH.MPT): token_embd, blk.N.{attn_norm, attn_qkv, attn_output, ffn_norm,
ffn_up, ffn_down}, output_norm, no `output` tensor (llama.cpp then reuses token_embd, as MPT ties
them); mpt.context_length, embedding_length, block_count, feed_forward_length,
attention.head_count(_kv), attention.layer_norm_epsilon, attention.max_alibi_bias,
attention.clamp_kqv. 2-D weights are written in F16, norms and biases in F32, as convert_hf_to_gguf
does. Q8_0 / Q4_0 come from llama.cpp's own quantizer (llama_cpp.llama_model_quantize, default
parameters: exactly what `llama-quantize in.gguf out.gguf Q4_0` gives users).

llama.cpp refuses a model without a tokenizer, and the synthetic checkpoints have none, so a minimal
GPT-2 style byte-level BPE vocabulary of the model's vocab_size is written: <|endoftext|>, the 256
byte symbols, then two-symbol merges. The benchmarks feed token ids, so its contents do not matter."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUANT_TYPES = {"q8_0": 7, "q4_0": 2, "q4_k_m": 15}  # llama_ftype: LLAMA_FTYPE_MOSTLY_Q8_0, _Q4_0, _Q4_K_M

_BLOCK = {
    "norm_1": "attn_norm", "attn.Wqkv": "attn_qkv", "attn.out_proj": "attn_output", "norm_2": "ffn_norm",
    "ffn.up_proj": "ffn_up", "ffn.down_proj": "ffn_down", "attn.q_ln": "attn_q_norm", "attn.k_ln": "attn_k_norm",
}
_TOP = {"transformer.wte": "token_embd", "transformer.norm_f": "output_norm", "transformer.wpe": "position_embd"}


def gguf_name(hf_name: str) -> str | None:
    """The llama.cpp name of a hub tensor; None for tensors llama.cpp does not use (lm_head: tied)."""
    stem, _, suffix = hf_name.rpartition(".")
    if stem == "lm_head":
        return None
    if stem in _TOP:
        return f"{_TOP[stem]}.{suffix}"
    m = re.fullmatch(r"transformer\.blocks\.(\d+)\.(.+)", stem)
    if m and m.group(2) in _BLOCK:
        return f"blk.{m.group(1)}.{_BLOCK[m.group(2)]}.{suffix}"
    raise KeyError(f"{hf_name}: no llama.cpp MPT tensor for it")


def byte_symbols() -> list[str]:
    """GPT-2's bytes_to_unicode: the printable symbol of each byte, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def minimal_vocab(vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): id 0 <|endoftext|> (control), 256 byte symbols, then merges."""
    import gguf

    sym = byte_symbols()
    n_merge = vocab_size - 1 - len(sym)
    if n_merge < 0 or n_merge > len(sym) ** 2:
        raise ValueError(f"vocab_size {vocab_size} cannot hold a byte-level vocabulary")
    pairs = [(a, b) for a in sym for b in sym][:n_merge]
    tokens = ["<|endoftext|>"] + sym + [a + b for a, b in pairs]
    types = [int(gguf.TokenType.CONTROL)] + [int(gguf.TokenType.NORMAL)] * (len(tokens) - 1)
    return tokens, types, [f"{a} {b}" for a, b in pairs]


def convert(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Writes an F16 GGUF of the checkpoint (a folder in the hub layout)."""
    import gguf
    import torch

    from mpt_lite.hub.checkpoint import iter_tensors, resolve_checkpoint, weight_files

    folder = resolve_checkpoint(checkpoint)
    cfg = json.loads((folder / "config.json").read_text())
    attn = cfg.get("attn_config", {})
    d = cfg["d_model"]
    out = Path(out)
    w = gguf.GGUFWriter(str(out), "mpt")
    w.add_name(folder.name)
    w.add_context_length(cfg["max_seq_len"])
    w.add_embedding_length(d)
    w.add_block_count(cfg["n_layers"])
    w.add_feed_forward_length(int(cfg.get("expansion_ratio", 4) * d))
    w.add_head_count(cfg["n_heads"])
    if attn.get("kv_n_heads"):
        w.add_head_count_kv(attn["kv_n_heads"])
    w.add_layer_norm_eps(cfg.get("layer_norm_epsilon", 1e-5))
    if attn.get("clip_qkv") is not None:
        w.add_clamp_kqv(attn["clip_qkv"])
    w.add_max_alibi_bias(float(attn.get("alibi_bias_max", 8)) if attn.get("alibi", True) else 0.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, types, merges = minimal_vocab(cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("mpt")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    for name, t in iter_tensors(weight_files(folder)):
        new = gguf_name(name)
        if new is None:
            continue
        t = t.to(torch.float32)
        arr = t.numpy().astype(np.float16 if t.dim() == 2 else np.float32)
        w.add_tensor(new, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def quantize(src: str | os.PathLike, dst: str | os.PathLike, qtype: str, threads: int = 2) -> Path:
    """llama.cpp's quantizer on an F16 GGUF (needs llama-cpp-python)."""
    import ctypes

    import llama_cpp

    if qtype not in QUANT_TYPES:
        raise ValueError(f"quant type must be one of {sorted(QUANT_TYPES)}, got {qtype!r}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[qtype]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, {qtype}) failed with code {rc}")
    return Path(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--type", choices=["f16", *QUANT_TYPES], default="f16")
    args = ap.parse_args()
    if args.type == "f16":
        print(convert(args.checkpoint, args.out))
    else:
        f16 = Path(args.out).with_suffix(".f16.gguf")
        convert(args.checkpoint, f16)
        print(quantize(f16, args.out, args.type))
        f16.unlink()


if __name__ == "__main__":
    main()
