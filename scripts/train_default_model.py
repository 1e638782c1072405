#!/usr/bin/env python
"""Trains the embedded default model: a byte-level BPE tokenizer and a small MPT (ALiBi, no
biases) on this Python's own standard library sources, then saves both into
mpt_lite/default_model/ and reports the held-out perplexity.

Reproducible: a fixed seed, a fixed number of steps, a seeded file split and seeded batches (the
corpus is whatever standard library this Python ships, so another Python version trains on other
text). Minutes on two CPU cores:

    python scripts/train_default_model.py            # ~8 minutes on 2 cores with AVX-512 BF16 or AMX
    python scripts/train_default_model.py --steps 20 --out /tmp/m   # a quick smoke run
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

from default_model_corpus import (bf16_emulated_note, held_out_perplexity, read_text, split_files,  # noqa: E402
                                  stdlib_files, token_stream)
from mpt_lite import MptConfig, MptForCausalLM, MptTokenizer  # noqa: E402
from mpt_lite.text.chat_template import CHATML_TEMPLATE  # noqa: E402

EOS = "<|endoftext|>"  # bos, eos and unk, as in the mosaicml repos (gpt-neox-20b's tokenizer)
PAD = "<|padding|>"
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]  # added tokens, as in mpt-7b-chat


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "mpt_lite" / "default_model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=4000, help="BPE vocabulary size (before the chat tokens)")
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--n-heads", type=int, default=6)
    p.add_argument("--seq-len", type=int, default=256, help="training window (tokens)")
    p.add_argument("--max-seq-len", type=int, default=1024, help="max_seq_len written to config.json (ALiBi)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="matmuls in bfloat16 (torch.autocast; float32 weights, optimizer and loss): about 2x faster "
                        "on CPUs with AMX or AVX-512 BF16, emulated and very slow without them (--no-bf16)")
    p.add_argument("--save-dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    return p.parse_args()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_tokenizer(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tok.add_special_tokens(CHAT_TOKENS)
    return tok


def tokenizer_config(max_len: int) -> dict:
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": EOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": CHAT_TOKENS,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "GPTNeoXTokenizer",
        "chat_template": CHATML_TEMPLATE,
    }


def model_config(args, tok) -> MptConfig:
    n_tokens = tok.get_vocab_size(with_added_tokens=True)
    vocab_rows = math.ceil(n_tokens / 64) * 64  # padded to a multiple of 64, as the mosaicml repos do
    if vocab_rows == n_tokens:
        vocab_rows += 64  # keep rows beyond the tokenizer, so that code path is always exercised
    return MptConfig(
        architectures=["MPTForCausalLM"],
        d_model=args.d_model, n_heads=args.n_heads, n_layers=args.n_layers, expansion_ratio=4,
        max_seq_len=args.max_seq_len, vocab_size=vocab_rows, resid_pdrop=0, emb_pdrop=0,  # ints, as the hub configs
        learned_pos_emb=True, no_bias=True, norm_type="low_precision_layernorm", logit_scale=None,
        attn_config={"attn_type": "multihead_attention", "attn_impl": "torch", "alibi": True,
                     "alibi_bias_max": 8, "clip_qkv": None, "qk_ln": False, "attn_pdrop": 0},
        init_device="cpu", use_cache=False, initializer_range=0.02, embedding_fraction=1.0,
        bos_token_id=tok.token_to_id(EOS), eos_token_id=tok.token_to_id(EOS), pad_token_id=tok.token_to_id(PAD),
        torch_dtype=args.save_dtype, tokenizer_name="mpt_lite/default_model",
    )


def optimizer(model, lr: float) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))  # cosine down to 10%


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    if args.bf16 and (note := bf16_emulated_note()):
        log(note)

    files = stdlib_files()
    train_files, held_files = split_files(files, args.seed)
    train_texts = [read_text(f) for f in train_files]
    log(f"corpus: {len(train_files)} train files ({sum(map(len, train_texts)) / 1e6:.1f} M chars), "
        f"{len(held_files)} held-out files, from {files[0].parent}")

    tok = train_tokenizer(train_texts, args.vocab)
    eos = tok.token_to_id(EOS)
    train_ids = torch.tensor(token_stream(tok, train_files, eos), dtype=torch.long)
    held_ids = token_stream(tok, held_files, eos)
    held_bytes = sum(len(f.read_bytes()) for f in held_files)
    log(f"tokenizer: {tok.get_vocab_size(with_added_tokens=True)} tokens; train stream {len(train_ids):,} tokens, "
        f"held-out {len(held_ids):,} tokens ({time.time() - t0:.0f}s)")

    config = model_config(args, tok)
    model = MptForCausalLM(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters, vocab rows {config.vocab_size}, d_model {config.d_model}, "
        f"{config.n_layers} layers, {config.n_heads} heads")
    opt = optimizer(model, args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    span = len(train_ids) - args.seq_len
    t_train = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        starts = torch.randint(0, span, (args.batch,), generator=gen)
        x = torch.stack([train_ids[s:s + args.seq_len] for s in starts.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0 or step == args.steps - 1:
            el = time.time() - t_train
            tps = (step + 1) * args.batch * args.seq_len / el
            eta = el / (step + 1) * (args.steps - step - 1)
            log(f"step {step + 1:4d}/{args.steps}  loss {loss.item():.3f}  lr {g['lr']:.2e}  "
                f"{tps:,.0f} tok/s  elapsed {el:.0f}s  eta {eta:.0f}s")
    train_s = time.time() - t_train

    ppl_fp32, n_eval = held_out_perplexity(model, held_ids, args.seq_len)
    log(f"held-out perplexity (float32 weights in memory): {ppl_fp32:.3f} over {n_eval:,} tokens")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model.to(getattr(torch, args.save_dtype))
    model.tokenizer = MptTokenizer(tok, tokenizer_config(args.max_seq_len))
    model.save_pretrained(out)
    reloaded = MptForCausalLM.from_pretrained(out, dtype=torch.float32)
    ppl, _ = held_out_perplexity(reloaded, held_ids, args.seq_len)
    bits_per_byte = math.log2(ppl) / (held_bytes / len(held_ids))  # bits per token / bytes per token
    info = {
        "seed": args.seed, "steps": args.steps, "batch": args.batch, "seq_len": args.seq_len, "lr": args.lr,
        "parameters": n_params, "vocab_rows": config.vocab_size,
        "tokenizer_tokens": tok.get_vocab_size(with_added_tokens=True),
        "python": platform.python_version(), "torch": torch.__version__,
        "train_files": len(train_files), "held_out_files": len(held_files),
        "train_tokens_seen": args.steps * args.batch * args.seq_len, "train_stream_tokens": len(train_ids),
        "held_out_tokens_scored": n_eval, "held_out_perplexity_fp32_in_memory": round(ppl_fp32, 4),
        "held_out_perplexity_saved_weights": round(ppl, 4), "approx_bits_per_byte": round(bits_per_byte, 4),
        "train_seconds": round(train_s, 1), "total_seconds": round(time.time() - t0, 1),
        "threads": args.threads, "saved_dtype": args.save_dtype, "bf16_autocast": args.bf16,
        "d_model": config.d_model, "n_layers": config.n_layers, "n_heads": config.n_heads,
    }
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    log(f"saved to {out} ({size / 1e6:.1f} MB); held-out perplexity of the saved {args.save_dtype} weights: "
        f"{ppl:.3f}; training {train_s:.0f}s, total {time.time() - t0:.0f}s")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
