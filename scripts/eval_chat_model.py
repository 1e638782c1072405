#!/usr/bin/env python
"""How well the embedded default model answers in chat, greedy, as `mpt-lite chat` runs it.

Two sets of requests: one per function (with a docstring, source at most 256 tokens) of the
held-out standard library modules (the base model's seeded split, never trained on), phrased as
scripts/chat_pairs.py phrases training requests that name the function; and the 20 hand-written
everyday requests of scripts/chat_everyday_requests.py. For each set: the fraction of replies that
end their turn (<|im_end|>) within --max-new-tokens tokens, that parse with ast.parse, and that
define a function with the requested name.

    python scripts/eval_chat_model.py                       # the shipped model, default 4-bit load
    python scripts/eval_chat_model.py --model build/chat_model --bits none --transcripts t.json
"""
from __future__ import annotations

import argparse
import ast
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

import mpt_lite  # noqa: E402
from mpt_lite import MptTokenizer  # noqa: E402
from chat_everyday_requests import EVERYDAY_REQUESTS  # noqa: E402
from chat_pairs import all_functions, request  # noqa: E402
from default_model_corpus import split_files, stdlib_files  # noqa: E402
from mpt_lite.text.chat_template import IM_END, IM_START  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=mpt_lite.default_model_path())
    p.add_argument("--bits", default="4", choices=["4", "8", "none"], help="as `mpt-lite chat --bits`")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-source-tokens", type=int, default=256, help="held-out functions longer are left out")
    p.add_argument("--lengths-from", type=Path, default=None,
                   help="a model folder whose tokenizer measures --max-source-tokens (default: the model's own), so "
                        "that models with different tokenizers are asked the same requests")
    p.add_argument("--limit", type=int, default=None, help="at most this many held-out requests (seeded sample)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="as `mpt-lite chat --repetition-penalty` (1.0, the default, is none: the issue's numbers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--transcripts", type=Path, default=None, help="write every request and reply here (JSON)")
    p.add_argument("--record", action="store_true",
                   help="also store the numbers in the model's training_info.json (its chat_finetune section)")
    return p.parse_args()


def defines(tree: ast.AST, name: str) -> bool:
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in ast.walk(tree))


def judge(reply: str, name: str) -> tuple[bool, bool]:
    """(parses into at least one statement, defines the requested name); a reply of nothing but
    comments parses but is not counted as code."""
    try:
        tree = ast.parse(reply)
    except (SyntaxError, ValueError):
        return False, False
    return bool(tree.body), defines(tree, name)


def answers(model, requests: list[str], max_new_tokens: int,
            repetition_penalty: float = 1.0) -> list[tuple[str, bool, int]]:
    """(reply text, ended its turn with <|im_end|>, tokens generated) per request, decoded together
    (left-padded; rows run unpadded on the engine, so each reply is what it would be alone)."""
    tok = model.tokenizer
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": r}], add_generation_prompt=True),
                          add_special_tokens=False) for r in requests]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    im_end = tok.token_to_id(IM_END)
    stops = [i for i in (im_end, tok.token_to_id(IM_START), tok.eos_token_id) if i is not None]
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=stops,
                         repetition_penalty=repetition_penalty)
    results = []
    for row in out[:, width:].tolist():
        first_stop = next((i for i, t in enumerate(row) if t in stops), None)
        if first_stop is None:  # ran to max_new_tokens (only stopped rows are padded)
            results.append((tok.decode(row), False, len(row)))
        else:
            results.append((tok.decode(row[:first_stop]), row[first_stop] == im_end, first_stop + 1))
    return results


def evaluate(model, requests: list[tuple[str, str]], max_new_tokens: int, label: str,
             batch: int = 16, repetition_penalty: float = 1.0) -> tuple[dict, list[dict]]:
    rows = []
    t0 = time.time()
    for i in range(0, len(requests), batch):
        chunk = requests[i:i + batch]
        for (text, name), (reply, ended, n) in zip(chunk, answers(model, [t for t, _ in chunk], max_new_tokens, repetition_penalty)):
            parses, named = judge(reply, name)
            rows.append({"request": text, "name": name, "reply": reply, "ended": ended, "tokens": n,
                         "parses": parses, "defines_name": named})
        print(f"{label}: {len(rows)}/{len(requests)} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
    n = len(rows)
    summary = {"requests": n, "ended": sum(r["ended"] for r in rows) / n, "parses": sum(r["parses"] for r in rows) / n,
               "defines_name": sum(r["defines_name"] for r in rows) / n,
               "mean_tokens": sum(r["tokens"] for r in rows) / n}
    return summary, rows


def held_out_functions(args) -> list:
    """Functions with a docstring of the held-out files of the model's own split (its training seed)."""
    info_path = args.model / "training_info.json"
    seed = json.loads(info_path.read_text()).get("seed", 0) if info_path.is_file() else 0
    return all_functions(split_files(stdlib_files(), seed)[1])


def held_out_requests(model, args) -> list[tuple[str, str]]:
    tok = MptTokenizer.from_pretrained(args.lengths_from) if args.lengths_from else model.tokenizer
    fns = [f for f in held_out_functions(args)
           if len(tok.encode(f.full_source, add_special_tokens=False)) <= args.max_source_tokens]
    rng = random.Random(args.seed)
    if args.limit is not None and args.limit < len(fns):
        fns = rng.sample(fns, args.limit)
    return [(request(f, rng, named_only=True), f.name) for f in fns]


def record(info_path: Path, args, results: dict) -> None:
    info = json.loads(info_path.read_text())
    if "chat_finetune" not in info:
        raise SystemExit(f"{info_path} has no chat_finetune section to record the numbers in")
    info["chat_finetune"]["chat_eval"] = {
        "script": "scripts/eval_chat_model.py", "bits": args.bits, "greedy": True, "max_new_tokens": args.max_new_tokens,
        **{label: {k: v if isinstance(v, dict) else round(v, 4) for k, v in s.items()}
           for label, s in results.items()}}
    info_path.write_text(json.dumps(info, indent=2) + "\n")


CODE_PROMPTS = ["def fibonacci(n):", "def quicksort(xs):", "class Stack:", "import os"]


def code_prompts(functions: list, seed: int, n: int) -> dict[str, list[str]]:
    """The plain-code prompts: the `def` lines of n of the functions (seeded sample), and CODE_PROMPTS."""
    fns = random.Random(seed).sample(functions, n)
    return {"held-out def lines": [f.source.splitlines()[0] for f in fns], "hand-written prompts": CODE_PROMPTS}


def code_continuations(model, prompts: dict[str, list[str]], max_new_tokens: int = 64) -> dict:
    """Plain code generation, outside chat (what `mpt-lite generate` does): for each set of prompts
    (code_prompts), the fraction whose greedy continuation contains a `return` or a call within
    max_new_tokens (tests/test_default_model.py asks it of `def fibonacci(n):`)."""
    out = {}
    for label, texts in prompts.items():
        conts = [model.generate(p, max_new_tokens=max_new_tokens) for p in texts]
        out[label] = {"prompts": len(texts), "return_or_call": sum("return" in t or "(" in t for t in conts) / len(texts)}
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    bits = None if args.bits == "none" else int(args.bits)
    model = mpt_lite.load(str(args.model), bits=bits)
    results, transcripts = {}, {}
    for label, reqs in (("held-out stdlib", held_out_requests(model, args)),
                        ("everyday", [tuple(r) for r in EVERYDAY_REQUESTS])):
        results[label], transcripts[label] = evaluate(model, reqs, args.max_new_tokens, label,
                                                            repetition_penalty=args.repetition_penalty)
    code = code_continuations(model, code_prompts(held_out_functions(args), args.seed, 40))
    print(f"model {args.model}, bits {args.bits}, greedy, repetition penalty {args.repetition_penalty}, "
          f"at most {args.max_new_tokens} new tokens\n")
    print("| requests | n | end their turn | parse | define the requested name | mean reply tokens |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, s in results.items():
        print(f"| {label} | {s['requests']} | {100 * s['ended']:.0f}% | {100 * s['parses']:.0f}% | "
              f"{100 * s['defines_name']:.0f}% | {s['mean_tokens']:.0f} |")
    for label, c in code.items():
        print(f"plain code, {label}: {100 * c['return_or_call']:.0f}% of {c['prompts']} continuations "
              "(greedy, 64 tokens) have a return or a call")
    results["plain code"] = code
    if args.record:
        record(args.model / "training_info.json", args, results)
    if args.transcripts:
        args.transcripts.write_text(json.dumps({"results": results, "transcripts": transcripts}, indent=1) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
