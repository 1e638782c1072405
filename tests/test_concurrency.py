"""Two quantized models (int4 and nf4) and two Engines driven from six Python threads at once, while
another thread keeps resizing the kernels' thread pool: every output equals a single-threaded
run's, and nothing deadlocks. The run happens in a child process (main() below) so that a hang
fails the test within a bound instead of hanging the suite: the child joins its threads with a
timeout and dumps every thread's stack when one does not finish."""
from __future__ import annotations

import faulthandler
import itertools
import sys
import threading
import time

import torch

from subproc import run_python

JOIN_TIMEOUT_S = 120  # the whole concurrent phase; a healthy run takes about 10 s on a busy 2-core machine
ROUNDS = 4            # jobs per worker thread

PROMPTS = [[17, 301, 45, 9, 1000, 12], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23],
           [400, 3, 3, 250]]


def test_models_and_engines_from_many_threads_match_a_single_threaded_run():
    r = run_python("import test_concurrency; test_concurrency.main()", timeout=JOIN_TIMEOUT_S + 120)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr[-6000:]}"
    assert "all outputs equal" in r.stdout, r.stdout


# ---- the child process ----

def _generate(model, prompt: list[int], n: int) -> list[int]:
    return model.generate(torch.tensor([prompt]), max_new_tokens=n)[0].tolist()


def _logits(model, prompt: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([prompt])).logits


def _engine_round(engine, round_: int) -> list[list[int]]:
    """Three requests of different lengths decoded together; which ones depends on the round."""
    reqs = [engine.add_request(PROMPTS[(round_ + i) % len(PROMPTS)], 6 + 3 * i) for i in range(3)]
    list(engine.run())
    return [r.output for r in reqs]


def _jobs(model) -> list:
    """The callables a generating thread runs, each returning something to compare."""
    return [lambda p=p, n=n: _generate(model, p, n) for p, n in zip(PROMPTS, (12, 8, 10))] + \
           [lambda p=p: _logits(model, p) for p in PROMPTS]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def main() -> None:
    import mpt_lite
    from mpt_lite import Engine, kernels

    models = {"int4": mpt_lite.load(bits=4, quant_type="int4"), "nf4": mpt_lite.load(bits=4, quant_type="nf4")}
    models["nf4"].num_threads = 2  # a per-model cap below the pool's size, next to the default

    # single-threaded references
    expected_jobs = {name: [job() for job in _jobs(m)] for name, m in models.items()}
    expected_rounds = {}
    for name, m in models.items():
        e = Engine(m, num_blocks=64)
        expected_rounds[name] = [_engine_round(e, r) for r in range(ROUNDS)]

    failures: list[str] = []
    done = threading.Event()

    def generating(name: str, offset: int) -> None:
        jobs = _jobs(models[name])
        for i in range(ROUNDS * 2):
            j = (i + offset) % len(jobs)
            got = jobs[j]()
            if not _same(got, expected_jobs[name][j]):
                failures.append(f"{name} job {j} in round {i} differs from the single-threaded run")

    def engine_loop(name: str) -> None:
        engine = Engine(models[name], num_blocks=64)
        for r in range(ROUNDS):
            got = _engine_round(engine, r)
            if got != expected_rounds[name][r]:
                failures.append(f"{name} engine round {r}: {got} != {expected_rounds[name][r]}")

    resizes = 0

    def resizing() -> None:
        nonlocal resizes
        for n in itertools.cycle((1, 2, 3)):
            if done.is_set():
                return
            kernels.set_num_threads(n)
            resizes += 1
            time.sleep(0.003)

    def guarded(fn, *args):
        def run():
            try:
                fn(*args)
            except BaseException as e:  # reported by the main thread
                failures.append(f"{fn.__name__}{args}: {type(e).__name__}: {e}")
        return threading.Thread(target=run, name=f"{fn.__name__}{args}", daemon=True)

    workers = [guarded(generating, name, k) for name in models for k in (0, 3)]
    workers += [guarded(engine_loop, name) for name in models]
    resizer = threading.Thread(target=resizing, name="resizer", daemon=True)
    start = time.monotonic()
    resizer.start()
    for t in workers:
        t.start()
    deadline = start + JOIN_TIMEOUT_S
    for t in workers:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = [t.name for t in workers if t.is_alive()]
    done.set()
    resizer.join(timeout=10)
    if hung or resizer.is_alive():
        print(f"threads still running after {JOIN_TIMEOUT_S} s: {hung + (['resizer'] if resizer.is_alive() else [])}",
              file=sys.stderr)
        faulthandler.dump_traceback(all_threads=True)
        sys.stderr.flush()
        import os
        os._exit(3)  # a deadlocked thread would keep a normal exit waiting
    if failures:
        raise AssertionError("\n".join(failures))
    print(f"all outputs equal: {len(workers)} threads, {resizes} pool resizes, {time.monotonic() - start:.1f} s")
