"""What constrained decoding costs in decode speed: the embedded default model (4-bit), the same
prompts decoded free and under a JSON schema, a regex and a Lark grammar, at batch 1 and in a
batch of 8 where half the rows are constrained.

    python benchmarks/bench_constrained.py [--tokens 64] [--repeats 7]

Decode steps only (the prefill step runs before the clock starts). The configurations run
interleaved, --repeats rounds, and the best round of each counts (on a shared machine the best
round is the one least disturbed). A grammar that completes early still counts its own tokens.
Besides wall-clock tokens/s, the engine thread's CPU time per step (time.thread_time: the time
the thread was actually running, so waiting for a busy CPU does not count) and the part of it
spent in the constraint code (mask + matcher advance)."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

LIST_SCHEMA = {"type": "array", "minItems": 64, "items": {  # long enough to last the whole run
    "type": "object", "properties": {"name": {"type": "string", "maxLength": 16}, "line": {"type": "integer"}},
    "required": ["name", "line"], "additionalProperties": False}}
REGEX = r"(def [a-z_]{1,12}\([a-z_, ]{0,20}\):\n    return [a-z_0-9 +*]{1,20}\n\n)+"
LARK = r"""start: stmt+
stmt: NAME " = " expr "\n"
expr: NAME | NUMBER | expr " + " expr | "(" expr ")"
NAME: /[a-z_][a-z_0-9]{0,8}/
NUMBER: /[0-9]{1,4}/
"""


HOOK = {"s": 0.0}


def timed(fn):
    def wrapper(*a, **kw):
        t0 = time.thread_time()
        try:
            return fn(*a, **kw)
        finally:
            HOOK["s"] += time.thread_time() - t0
    return wrapper


def decode_rate(model, prompts, makers, tokens: int) -> tuple[float, float, float]:
    from mpt_lite.runtime import Engine, SamplingParams

    engine = Engine(model, num_blocks=512, max_num_seqs=len(prompts))
    reqs = [engine.add_request(model.tokenizer.encode(p), tokens, params=SamplingParams(),
                               constraint=m() if m is not None else None) for p, m in zip(prompts, makers)]
    engine.step()  # prefill (and the first token)
    before, steps = sum(len(r.output) for r in reqs), 0
    HOOK["s"] = 0.0
    t0, c0 = time.perf_counter(), time.thread_time()
    while engine.has_unfinished():
        engine.step()
        steps += 1
    dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
    return (sum(len(r.output) for r in reqs) - before) / dt, 1e3 * cpu / max(steps, 1), 1e3 * HOOK["s"] / max(steps, 1)


def main() -> None:
    import mpt_lite
    from mpt_lite.runtime import constraints, engine as engine_mod
    from mpt_lite.runtime.constraints import constraint_factory

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    engine_mod.constrain_logits = timed(engine_mod.constrain_logits)
    constraints.Constraint.advance = timed(constraints.Constraint.advance)
    model = mpt_lite.load()
    tok = model.tokenizer
    kinds = {"free": None, "json schema": constraint_factory(tok, json_schema=LIST_SCHEMA),
             "regex": constraint_factory(tok, regex=REGEX), "lark grammar": constraint_factory(tok, grammar=LARK)}
    configs = []
    for batch in (1, 8):
        for name, make in kinds.items():
            makers = [make if (batch == 1 or i % 2 == 0) else None for i in range(batch)]
            label = name if batch == 1 or make is None else f"{name} (4 of 8 rows)"
            configs.append((batch, label, [f"# item {i}\n" for i in range(batch)], makers))
    best = {}
    for _ in range(args.repeats):
        for batch, label, prompts, makers in configs:
            rate, cpu, hook = decode_rate(model, prompts, makers, args.tokens)
            old = best.get((batch, label), (0, float("inf"), float("inf")))
            best[(batch, label)] = (max(rate, old[0]), min(cpu, old[1]), min(hook, old[2]))
    print("| batch | constraint | decode tok/s | vs free | step CPU ms | vs free | constraint code ms/step |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for batch, label, _, _ in configs:
        rate, cpu, hook = best[(batch, label)]
        free_rate, free_cpu, _ = best[(batch, "free")]
        print(f"| {batch} | {label} | {rate:.0f} | {rate / free_rate - 1:+.1%} | {cpu:.3f} | {cpu / free_cpu - 1:+.1%} "
              f"| {hook:.3f} |")


if __name__ == "__main__":
    main()
