#!/usr/bin/env python
"""Fine-tunes the embedded default model to answer in chat: continues from its weights on ChatML
conversations made from the standard library's own functions (scripts/chat_pairs.py; a request
from the name, signature and first docstring sentence, the source as the answer), loss on the
assistant turns only, mixed with plain code (random windows, windows from a module-level `def`,
the training functions as the answers write them) so that the base model's held-out code
perplexity does not get worse, and with copy rows (fresh names listed, then defined: what grows
the induction heads that copy a requested name). Token-level unlikelihood on the answers keeps
greedy decoding out of loops. The held-out files are the base model's (same seeded split), so no
held-out module's function is trained on.

Reproducible: a fixed seed, a fixed number of steps, seeded phrasings and batches. Matmuls run in
bfloat16 (torch.autocast; --no-bf16 for float32), so results depend on the CPU's bf16 rounding.

    python scripts/train_default_model.py --out build/base_model     # the base model (or: git show e497c42:...)
    python scripts/finetune_chat_model.py --out build/chat_model     # the shipped run (docs/default_model.md)
    python scripts/finetune_chat_model.py --steps 10 --eval-every 5 --out /tmp/c    # a quick smoke run
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from chat_data import chat_rows, copy_rows, function_rows  # noqa: E402
from chat_everyday_requests import EVERYDAY_REQUESTS  # noqa: E402
from chat_pairs import NAME_STYLES, NamePool, all_functions, request  # noqa: E402
from eval_chat_model import answers, code_continuations, code_prompts, judge  # noqa: E402
from default_model_corpus import bf16_emulated_note, held_out_perplexity, split_files, stdlib_files, token_stream  # noqa: E402
from train_default_model import lr_at, optimizer  # noqa: E402  (the base run's AdamW groups and schedule)
from mpt_lite import MptForCausalLM, MptTokenizer  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, default=ROOT / "build" / "base_model",
                   help="the base model (scripts/train_default_model.py --out build/base_model); the shipped "
                        "default model is already fine-tuned")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "chat_model")
    p.add_argument("--seed", type=int, default=0, help="also picks the held-out files, as the base training did")
    p.add_argument("--seq-len", type=int, default=256, help="training row (tokens); longer conversations are skipped")
    p.add_argument("--max-answer-tokens", type=int, default=120, help="functions whose source is longer are left out")
    p.add_argument("--follow-up-fraction", type=float, default=0.3, help="conversations with a second turn")
    p.add_argument("--unnamed-fraction", type=float, default=0.1,
                   help="requests that do not name the function (\"How do I ...?\")")
    p.add_argument("--rename-fraction", type=float, default=0.5,
                   help="conversations whose function gets a fresh name (verb_noun from other training names), "
                        "in the request and the answer, drawn anew each epoch")
    p.add_argument("--head-weight", type=float, default=4.0,
                   help="loss weight of each answer's first line (`def name(...):`) against 1 for the rest")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--code-rows", type=int, default=4, help="rows of each batch that are plain code")
    p.add_argument("--def-start-rows", type=int, default=1,
                   help="of the code rows, this many start at a module-level `def` (plain-code prompts open so)")
    p.add_argument("--function-rows", type=int, default=2,
                   help="of the code rows, this many are the training functions as plain code, as the answers "
                        "write them (chat_data.function_rows)")
    p.add_argument("--copy-rows", type=int, default=5,
                   help="rows of each batch of fresh names listed, then defined in another order, loss on the defined "
                        "names (chat_data.copy_rows)")
    p.add_argument("--name-style", choices=NAME_STYLES, default="varied",
                   help="fresh names (renamed conversations, copy rows): snake: verb_noun of training words; "
                        "varied: half so, half camelCase, private or invented words, and copy rows that also "
                        "list the names in backticks or quotes (chat_pairs.NamePool, chat_data.name_list)")
    p.add_argument("--continue-chat", action="store_true",
                   help="allow --base to be an already chat fine-tuned model (a further stage; its record is kept)")
    p.add_argument("--steps", type=int, default=1800)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=600,
                   help="measure every this many steps (0: only at the end) the held-out code perplexity, chat "
                        "loss, greedy chat replies on a sample and plain-code continuations on a sample, and keep "
                        "the checkpoint of best chat replies among those within --max-ppl-change and --min-code")
    p.add_argument("--max-ppl-change", type=float, default=0.02, help="allowed held-out code perplexity change")
    p.add_argument("--min-code", type=float, default=0.85,
                   help="least fraction of plain-code continuations (the sample; the base has 90%% on it, 98%% on "
                        "eval_chat_model.py's 40 + 4) with a return or a call")
    p.add_argument("--chat-sample", type=int, default=32,
                   help="held-out requests answered at each checkpoint (plus the 20 everyday ones)")
    p.add_argument("--code-sample", type=int, default=16,
                   help="held-out def lines continued at each checkpoint (plus 4 hand-written prompts)")
    p.add_argument("--unlikelihood", type=float, default=1.0,
                   help="weight of token-level unlikelihood on the chat answers (against loops under greedy decoding)")
    p.add_argument("--ul-answer-only", action="store_true",
                   help="unlikelihood candidates from the answer's own earlier tokens only (default: every token of "
                        "the window, the request's included, as the shipped first stage ran)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="matmuls in bfloat16 (torch.autocast; float32 weights, optimizer and loss): several times "
                        "faster on CPUs with AMX or AVX-512 BF16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    return p.parse_args()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def weighted_loss(model, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, ul_rows: int = 0,
                  ul_weight: float = 0.0, ul_window: int = 64, ul_answer_only: bool = False) -> torch.Tensor:
    """Next-token cross-entropy over the labelled tokens, each weighted by w (1 = the plain mean);
    with ul_weight, plus token-level unlikelihood (Welleck et al. 2019, "Neural text generation
    with unlikelihood training") on the labelled tokens of the first ul_rows rows: -log(1 - p) of
    every token of the last ul_window tokens other than the target, which is what greedy decoding
    falls into when it loops (`self._check_closed()` line after line). ul_answer_only: the candidates are
    the assistant's own earlier tokens only, not the request's (whose name pieces the answer must copy)."""
    logits = model(input_ids=x).logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1),
                                           ignore_index=-100, reduction="none")
    labelled = (y[:, 1:] != -100)
    w = w[:, 1:].reshape(-1) * labelled.reshape(-1)
    loss = (ce * w).sum() / w.sum()
    if ul_weight and ul_rows:
        lg, xs, tgt = logits[:ul_rows], x[:ul_rows, :-1], x[:ul_rows, 1:]
        back = torch.arange(xs.shape[1])[:, None] - torch.arange(ul_window)[None, :]  # t, t-1, ..., t-window+1
        own = back >= 0
        if ul_answer_only:
            own = own & (y[:ul_rows, :-1] != -100)[:, back.clamp_min(0)]
        seen = torch.where(own, xs[:, back.clamp_min(0)], tgt[:, :, None])  # not a candidate: the target
        cand = torch.zeros(lg.shape, dtype=torch.bool).scatter_(2, seen, True).scatter_(2, tgt.unsqueeze(-1), False)
        one_minus_p = (1 - lg.softmax(-1)).clamp_min(1e-5)
        ul = -(one_minus_p.log() * cand).sum(-1)
        mask = labelled[:ul_rows]
        loss = loss + ul_weight * (ul * mask).sum() / mask.sum().clamp_min(1)
    return loss


def held_out_chat_loss(model, rows: list[tuple[list[int], list[int]]], batch: int = 16) -> float:
    """Mean loss per assistant token over fixed held-out rows."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(rows), batch):
            x = torch.tensor([r[0] for r in rows[i:i + batch]])
            y = torch.tensor([r[1] for r in rows[i:i + batch]])
            n = int((y[:, 1:] != -100).sum())
            total += float(model(input_ids=x, labels=y).loss) * n
            count += n
    model.train(was_training)
    return total / count


def chat_replies(model, requests: list[tuple[str, str]]) -> dict:
    """Greedy replies (at most 256 tokens, as eval_chat_model.py) to (request, name) pairs: the
    fractions that end their turn, parse, define the name."""
    rows = []
    for i in range(0, len(requests), 16):
        chunk = requests[i:i + 16]
        for (_, name), (reply, ended, _) in zip(chunk, answers(model, [t for t, _ in chunk], 256)):
            rows.append((ended, *judge(reply, name)))
    return {k: round(sum(r[j] for r in rows) / len(rows), 4) for j, k in enumerate(("ended", "parses", "defines_name"))}


def checkpoint(model, step: int, held: dict, seq_len: int, ppl_before: float) -> dict:
    """The held-out numbers of the weights in memory (float32) at this step: code perplexity, chat
    loss, chat replies on the sample requests, plain-code continuations on the sample prompts."""
    cpu0 = time.process_time()
    ppl, _ = held_out_perplexity(model, held["ids"], seq_len)
    point = {"step": step, "perplexity": round(ppl, 4), "perplexity_change": round(ppl / ppl_before - 1, 4),
             "chat_loss": round(held_out_chat_loss(model, held["rows"]), 4)}
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        point["held_out_sample"] = chat_replies(model, held["requests"])
        point["everyday"] = chat_replies(model, held["everyday"])
        code = code_continuations(model, held["code_prompts"])
    model.train(was_training)
    point["plain_code"] = round(sum(c["return_or_call"] * c["prompts"] for c in code.values())
                                / sum(c["prompts"] for c in code.values()), 4)
    point["chat_score"] = round(sum(point[k][m] for k in ("held_out_sample", "everyday")
                                    for m in ("ended", "parses", "defines_name")) / 6, 4)
    point["eval_cpu_seconds"] = round(time.process_time() - cpu0, 1)
    return point


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0, cpu0 = time.time(), time.process_time()

    if args.bf16 and (note := bf16_emulated_note()):
        log(note)
    base_info_path = args.base / "training_info.json"
    base_info = json.loads(base_info_path.read_text()) if base_info_path.is_file() else {}
    if "chat_finetune" in base_info and not args.continue_chat:
        raise SystemExit(f"{args.base} is already chat fine-tuned (its training_info.json has chat_finetune): "
                         "pass --base the base model, e.g. from scripts/train_default_model.py --out build/base_model")

    from tokenizers import Tokenizer
    tok = MptTokenizer.from_pretrained(args.base)
    bpe = Tokenizer.from_file(str(args.base / "tokenizer.json"))
    pad_id, eos_id = tok.pad_token_id, tok.eos_token_id

    train_files, held_files = split_files(stdlib_files(), args.seed)
    lengths = lambda fns: [len(e.ids) for e in bpe.encode_batch([f.source for f in fns], add_special_tokens=False)]
    train_fns = all_functions(train_files)
    train_fns = [f for f, n in zip(train_fns, lengths(train_fns)) if n <= args.max_answer_tokens]
    held_fns = all_functions(held_files)
    held_fns = [f for f, n in zip(held_fns, lengths(held_fns)) if n <= args.max_answer_tokens]
    code_ids = torch.tensor(token_stream(bpe, train_files, eos_id), dtype=torch.long)
    held_ids = token_stream(bpe, held_files, eos_id)
    rows = chat_rows(tok, bpe, train_fns, args.seq_len, pad_id, args.seed, args.follow_up_fraction,
                     args.unnamed_fraction, args.rename_fraction, args.name_style)
    fn_rows = function_rows(bpe, train_fns, args.seq_len, pad_id, args.seed + 3)
    copies = copy_rows(bpe, NamePool.of(train_fns, args.name_style), args.seq_len, pad_id, args.seed + 2)
    held_gen = chat_rows(tok, bpe, held_fns, args.seq_len, pad_id, args.seed + 1, args.follow_up_fraction,
                         args.unnamed_fraction)
    held_rows = [next(held_gen) for _ in range(32)]
    all_held = all_functions(held_files)
    eval_fns = [f for f, n in zip(all_held, lengths([replace(f, source=f.full_source) for f in all_held])) if n <= 256]
    rng = random.Random(args.seed)
    held = {"ids": held_ids, "rows": held_rows,
            "requests": [(request(f, rng, named_only=True), f.name) for f in rng.sample(eval_fns, args.chat_sample)],
            "everyday": [tuple(r) for r in EVERYDAY_REQUESTS],
            "code_prompts": code_prompts(all_held, args.seed, args.code_sample)}
    log(f"data: {len(train_fns)} train functions (source <= {args.max_answer_tokens} tokens) from "
        f"{len(train_files)} files, {len(held_fns)} held-out functions from {len(held_files)} files; "
        f"code stream {len(code_ids):,} tokens ({time.time() - t0:.0f}s)")

    model = MptForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    model.tokenizer = tok
    model.requires_grad_(True)  # from_pretrained loads for inference, with gradients off
    model.train()
    ppl_before, n_eval = held_out_perplexity(model, held_ids, args.seq_len)
    chat_before = held_out_chat_loss(model, held_rows)
    log(f"base: held-out code perplexity {ppl_before:.3f} over {n_eval:,} tokens; "
        f"held-out chat loss {chat_before:.3f} per assistant token")
    checkpoints: list[dict] = []
    if args.eval_every:
        checkpoints.append(checkpoint(model, 0, held, args.seq_len, ppl_before))
        log(f"checkpoint step 0 (base): {json.dumps(checkpoints[0])}")

    opt = optimizer(model, args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    span = len(code_ids) - args.seq_len
    def_starts = (code_ids[:span] == bpe.token_to_id("def")).nonzero().flatten()
    n_chat = args.batch - args.code_rows - args.copy_rows
    chat_tokens = 0
    args.out.mkdir(parents=True, exist_ok=True)
    eval_cpu = 0.0
    best = None  # (checkpoint, state_dict copy): a deepcopy of the model would fail (it holds a lock)
    t_train, cpu_train = time.time(), time.process_time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        batch = [next(rows) for _ in range(n_chat)] + [next(copies) for _ in range(args.copy_rows)]
        starts = torch.randint(0, span, (args.code_rows - args.def_start_rows - args.function_rows,),
                               generator=gen).tolist()
        starts += def_starts[torch.randint(0, len(def_starts), (args.def_start_rows,), generator=gen)].tolist()
        code = [code_ids[s:s + args.seq_len] for s in starts]
        batch += [next(fn_rows) for _ in range(args.function_rows)]
        x = torch.stack([torch.tensor(r[0]) for r in batch] + code)
        y = torch.stack([torch.tensor(r[1]) for r in batch] + code)
        w = 1 + (args.head_weight - 1) * torch.tensor([r[2] for r in batch] + [[False] * args.seq_len] * len(code),
                                                      dtype=torch.float32)
        chat_tokens += sum(sum(t != -100 for t in r[1]) for r in batch[:n_chat])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = weighted_loss(model, x, y, w, n_chat, args.unlikelihood, ul_answer_only=args.ul_answer_only)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if args.eval_every and ((step + 1) % args.eval_every == 0 or step == args.steps - 1):
            point = checkpoint(model, step + 1, held, args.seq_len, ppl_before)
            checkpoints.append(point)
            eval_cpu += point["eval_cpu_seconds"]
            log(f"checkpoint step {step + 1}: held-out code perplexity {point['perplexity']:.3f} "
                f"({100 * point['perplexity_change']:+.2f}%), chat loss {point['chat_loss']:.3f}, "
                f"chat sample {point['held_out_sample']} everyday {point['everyday']}, "
                f"plain code {point['plain_code']:.0%} ({point['eval_cpu_seconds']:.0f} cpu-s)")
            ok = point["perplexity_change"] <= args.max_ppl_change and point["plain_code"] >= args.min_code
            rank = lambda p: (p["chat_score"], -p["chat_loss"])
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            # every checkpoint on disk (bf16, as shipped), to evaluate fully or to keep another one
            (args.out / "checkpoints").mkdir(exist_ok=True)
            save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()},
                      str(args.out / "checkpoints" / f"step{step + 1}.safetensors"), metadata={"step": str(step + 1)})
            if ok and (best is None or rank(point) > rank(best[0])):
                best = (point, state)
        if step % 10 == 0 or step == args.steps - 1:
            el = time.time() - t_train
            eta = el / (step + 1) * (args.steps - step - 1)
            log(f"step {step + 1:4d}/{args.steps}  loss {loss.item():.3f}  lr {g['lr']:.2e}  "
                f"{el / (step + 1):.2f} s/step  cpu {time.process_time() - cpu_train - eval_cpu:.0f}s (+{eval_cpu:.0f} eval)  "
                f"elapsed {el:.0f}s  eta {eta:.0f}s")
    train_s, train_cpu = time.time() - t_train, time.process_time() - cpu_train
    if args.eval_every:
        if best is None:  # the last weights are saved all the same (and every checkpoint is on disk)
            log(f"WARNING: no checkpoint kept the held-out code perplexity within {args.max_ppl_change:+.0%} and "
                f"the plain-code continuations at {args.min_code:.0%} or more: saving the last step, marked so")
        else:
            model.load_state_dict(best[1])
            log(f"keeping the checkpoint of step {best[0]['step']}")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model.to(getattr(torch, args.save_dtype))
    model.tokenizer = tok
    model.save_pretrained(out)
    reloaded = MptForCausalLM.from_pretrained(out, dtype=torch.float32)
    ppl_after, _ = held_out_perplexity(reloaded, held_ids, args.seq_len)
    chat_after = held_out_chat_loss(reloaded, held_rows)
    info = {
        **base_info,  # the base run's facts
        "chat_finetune": {
            "script": "scripts/finetune_chat_model.py", "seed": args.seed, "steps": args.steps,
            "batch": args.batch, "code_rows_per_batch": args.code_rows,
            "copy_rows_per_batch": args.copy_rows,
            "def_start_rows_per_batch": args.def_start_rows,
            "function_rows_per_batch": args.function_rows,
            "bf16_autocast": args.bf16, "unlikelihood_weight": args.unlikelihood,
            "unlikelihood_answer_only": args.ul_answer_only, "base": str(args.base), "seq_len": args.seq_len,
            "lr": args.lr, "warmup": args.warmup, "max_answer_tokens": args.max_answer_tokens,
            "follow_up_fraction": args.follow_up_fraction, "unnamed_fraction": args.unnamed_fraction,
            "head_weight": args.head_weight, "rename_fraction": args.rename_fraction,
            "name_style": args.name_style,
            "assistant_turn": "the function's source with its docstring cut to its first sentence on one line",
            "checkpoint_rule": f"best mean of the sample's chat fractions (held-out {args.chat_sample} + everyday 20, "
                               f"float32, greedy) among checkpoints with code perplexity within "
                               f"{args.max_ppl_change:+.0%} and plain-code continuations >= {args.min_code:.0%} "
                               f"({args.code_sample} held-out def lines + 4 hand-written)",
            "checkpoints": checkpoints, "kept_step": best[0]["step"] if best else args.steps,
            "kept_meets_checkpoint_rule": best is not None or not args.eval_every,
            "train_functions": len(train_fns), "held_out_functions": len(held_fns),
            "assistant_tokens_trained": int(chat_tokens),
            "code_tokens_trained": args.steps * args.code_rows * args.seq_len,
            "held_out_perplexity_before": round(ppl_before, 4), "held_out_perplexity_after": round(ppl_after, 4),
            "held_out_perplexity_change": round(ppl_after / ppl_before - 1, 4),
            "held_out_chat_loss_before": round(chat_before, 4), "held_out_chat_loss_after": round(chat_after, 4),
            "python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
            "train_seconds": round(train_s, 1), "train_cpu_seconds": round(train_cpu - eval_cpu, 1),
            "checkpoint_eval_cpu_seconds": round(eval_cpu, 1),
            "total_seconds": round(time.time() - t0, 1), "total_cpu_seconds": round(time.process_time() - cpu0, 1),
            "saved_dtype": args.save_dtype,
        },
    }
    if "chat_finetune" in base_info:  # a further stage: the earlier one's record stays
        info["chat_finetune"]["previous_stage"] = base_info["chat_finetune"]
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    log(f"saved to {out} ({size / 1e6:.1f} MB); held-out code perplexity {ppl_before:.3f} -> {ppl_after:.3f} "
        f"({100 * (ppl_after / ppl_before - 1):+.2f}%), chat loss {chat_before:.3f} -> {chat_after:.3f}; "
        f"training {train_s:.0f}s ({train_cpu - eval_cpu:.0f} cpu-s, checkpoints {eval_cpu:.0f} cpu-s)")
    print(json.dumps(info["chat_finetune"]))


if __name__ == "__main__":
    main()
