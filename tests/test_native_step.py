"""The engine's native step (one C++ call per step) against the torch path, model.forward_paged,
on the same weights and a copy of the same KV cache: logits to float32 summation-order rounding,
identical greedy tokens; and the torch path for every variant the native step does not compute."""
import pytest
import torch
from torch import nn

from checkpoints import STEP_CONFIGS, quantized, random_causal_lm

from mpt_lite import ops
from mpt_lite.kernels import decode_step
from mpt_lite.runtime.engine import Engine
from mpt_lite.runtime.kv_cache import PagedKVCache, PagedStep
from mpt_lite.runtime.native_step import build_plan, native_logits, unsupported_reason

VOCAB = 101


FORMATS = {"float32": (None, None), "int8": ("int8", "int8"), "nf4": ("nf4", "nf4"), "int4": ("int4", "int4"),
           "int4_int8_embedding": ("int4", "int8"), "nf4_int8_embedding": ("nf4", "int8"),
           "int4_int6_embedding": ("int4", "int6")}
CONFIGS = STEP_CONFIGS


def tiny(**kw):
    return random_causal_lm(0, vocab_size=VOCAB, max_seq_len=256, **kw)


def assert_logits_close(got, want, rel=1e-4):
    tol = rel * want.abs().max().item()
    assert (got - want).abs().max().item() <= tol, (got - want).abs().max().item()


def run_both(model, schedule, kv_dtype=torch.float32, rel=1e-4):
    """Feeds sequences through two identical caches, one by the native step, one by the torch path,
    step by step as `schedule` says ([(sequence, new tokens), ...] per step); each step's logits of
    every sequence's last new token are compared."""
    cfg = model.config
    caches = [PagedKVCache(cfg.n_layers, cfg.kv_n_heads, cfg.head_dim, block_size=4, num_blocks=96, dtype=kv_dtype)
              for _ in range(2)]
    plan = build_plan(model, caches[0])
    g = torch.Generator().manual_seed(3)
    seqs = [[c.match_prefix([]) for c in caches] for _ in range(max(s for st in schedule for s, _ in st) + 1)]
    tokens = [[] for _ in seqs]
    for st in schedule:
        starts, ends, new = [], [], []
        for s, n in st:
            starts.append(len(tokens[s]))
            tokens[s] += torch.randint(0, VOCAB, (n,), generator=g).tolist()
            ends.append(len(tokens[s]))
            new += tokens[s][starts[-1]:]
        ids = torch.tensor(new, dtype=torch.long)
        out = []
        for c, cache in enumerate(caches):
            for (s, _), e in zip(st, ends):
                cache.grow(seqs[s][c], e)
            step = PagedStep(cache, [seqs[s][c] for s, _ in st], starts, ends)
            if c == 0:
                out.append(native_logits(plan, ids, step, step.last_rows.to(torch.int64)))
            else:
                with torch.inference_mode():
                    out.append(model.forward_paged(ids, step, step.last_rows))
            for (s, _), e in zip(st, ends):
                cache.commit(seqs[s][c], tokens[s], e)
        assert_logits_close(out[0], out[1], rel)
        assert torch.equal(out[0].argmax(-1), out[1].argmax(-1))
    return caches


# prefill chunks of ragged sequences (some above the q8 row limit), then decode batches of several
# sequences at different lengths, one sequence joining late with a prefill next to decodes
SCHEDULE = [[(0, 7), (1, 20)], [(0, 1), (1, 1)], [(0, 5), (2, 3)], [(0, 1), (1, 1), (2, 1)],
            [(0, 1), (1, 1), (2, 1)], [(1, 1)], [(3, 30), (0, 1)], [(0, 1), (1, 1), (2, 1), (3, 1)]]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("config", CONFIGS)
def test_native_step_equals_torch_path(fmt, config, float_activations):
    model = quantized(tiny(**CONFIGS[config]), *FORMATS[fmt])
    assert unsupported_reason(model, PagedKVCache(2, model.config.kv_n_heads, model.config.head_dim,
                                                  num_blocks=1)) is None
    run_both(model, SCHEDULE)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("config", CONFIGS)
def test_native_step_with_q8_activations_as_shipped(fmt, config):
    """Quantized matmuls of <= Q8_MAX_ROWS rows round activations to int8 blocks (nf4 where its
    blocks fit the rows). The two paths' norms and GELU differ in float32 summation order, so an
    activation lying within one ulp of a rounding boundary can round to the neighbouring code on one
    path only (one element off by amax/127, as quant_ops.py bounds): there the logits agree to
    1e-2, not 1e-4. float32 keeps 1e-4."""
    model = quantized(tiny(**CONFIGS[config]), *FORMATS[fmt])
    q8 = FORMATS[fmt] != (None, None)
    run_both(model, SCHEDULE, rel=1e-2 if q8 else 1e-4)


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.int8])
def test_native_step_low_precision_kv_cache(kv_dtype):
    # AMX off: bf16 operands turn a float32-ulp difference between the paths' layer norms into a bf16
    # ulp, which can flip an int8 KV code (0.4% of a logit); rel 1e-4 is for the KV path alone.
    with ops.use_amx(False):
        run_both(quantized(tiny(), "int4", "int8"), SCHEDULE[:4], kv_dtype)


def test_native_step_4bit_kv_cache():
    """The 4-bit cache (torch.quint4x2; head_dim 32 here, a multiple of its groups of 32)."""
    with ops.use_amx(False):
        run_both(quantized(tiny(n_heads=2), "int4", "int8"), SCHEDULE[:4], torch.quint4x2)


@pytest.mark.parametrize("fmt", ["float32", "int8", "nf4", "int4"])
def test_engine_greedy_tokens_identical(fmt):
    assert_engine_greedy_tokens_identical(quantized(tiny(), *FORMATS[fmt]))


def assert_engine_greedy_tokens_identical(model):
    """Three ragged prompts decoded greedily by the engine with the native step and with the torch path: the
    same tokens."""
    prompts = [list(range(5, 17)), [3, 9, 27], list(range(40, 80, 2))]
    outs = []
    for native in (True, False):
        engine = Engine(model, num_blocks=64, block_size=4, native_step=native, max_batch_tokens=24)
        assert engine.uses_native_step is native
        reqs = [engine.add_request(p, 12) for p in prompts]
        for _ in engine.run():
            pass
        outs.append([r.output for r in reqs])
    assert outs[0] == outs[1]


UNSUPPORTED = {
    "qk_ln": (dict(attn_config={"qk_ln": True}), None),
    "rmsnorm": (dict(norm_type="rmsnorm"), None),
    "wpe": (dict(attn_config={"alibi": False}, learned_pos_emb=True), None),
    "bfloat16": (dict(), torch.bfloat16),
    "float16": (dict(), torch.float16),
}


@pytest.mark.parametrize("variant", UNSUPPORTED)
def test_unsupported_variants_fall_back_to_torch_path(variant):
    kw, dtype = UNSUPPORTED[variant]
    model = tiny(**kw)
    if dtype is not None:
        model = model.to(dtype)
    engine = Engine(model, num_blocks=32, block_size=4)
    assert not engine.uses_native_step and engine.native_step_fallback_reason
    with pytest.raises(ValueError, match="torch path"):
        Engine(model, num_blocks=32, native_step=True)
    req = engine.add_request([1, 2, 3], 3)
    for _ in engine.run():
        pass
    assert len(req.output) == 3


def test_other_model_types_and_linears_fall_back():
    model = tiny()
    model.transformer.blocks[0].ffn.up_proj = nn.Sequential(model.transformer.blocks[0].ffn.up_proj)
    engine = Engine(model, num_blocks=32)
    assert "up_proj" in engine.native_step_fallback_reason


def test_forward_hooks_fall_back():
    model = tiny()
    calls = []
    handle = model.transformer.norm_f.register_forward_hook(lambda *a: calls.append(1))
    engine = Engine(model, num_blocks=32)
    assert "hooks" in engine.native_step_fallback_reason
    engine.add_request([1, 2], 2)
    for _ in engine.run():
        pass
    assert len(calls) == 2
    handle.remove()
    assert Engine(model, num_blocks=32).uses_native_step


def test_env_switch_and_argument(monkeypatch):
    model = tiny()
    assert Engine(model, num_blocks=8).uses_native_step
    assert not Engine(model, num_blocks=8, native_step=False).uses_native_step
    monkeypatch.setenv("MPT_LITE_NATIVE_STEP", "0")
    assert Engine(model, num_blocks=8).native_step_fallback_reason == "MPT_LITE_NATIVE_STEP=0"
    assert Engine(model, num_blocks=8, native_step=True).uses_native_step
    with pytest.raises(TypeError, match="native_step"):
        Engine(model, num_blocks=8, native_step="yes")


def test_bad_step_input_raises():
    model = tiny()
    cache = PagedKVCache(2, model.config.kv_n_heads, model.config.head_dim, block_size=4, num_blocks=8)
    plan = build_plan(model, cache)
    seq = cache.match_prefix([])
    cache.grow(seq, 2)
    step = PagedStep(cache, [seq], [0], [2])
    with pytest.raises(IndexError, match="token id"):
        native_logits(plan, torch.tensor([1, VOCAB]), step, torch.tensor([1]))
    with pytest.raises(IndexError, match="row"):
        native_logits(plan, torch.tensor([1, 2]), step, torch.tensor([5]))
    with pytest.raises(ValueError, match="slots"):
        native_logits(plan, torch.tensor([1, 2, 3]), step, torch.tensor([1]))


@pytest.mark.parametrize("amx", [False, True] if ops.amx_supported() else [False])
@pytest.mark.parametrize("fmt", ["int4", "nf4"])
def test_native_step_takes_q8_for_long_rows_where_the_torch_path_does(monkeypatch, fmt, amx):
    """A prefill of 20 rows: down_proj (in_features 1024 = Q8_GEMM_MIN_K) takes q8 activations in
    both paths (the integer GEMM tiles; with AMX, bf16 operands on its tiles), up_proj (in_features 64)
    float ones. A plan told otherwise (q8 never for long rows) must visibly differ from the torch path,
    the shipped plan must not."""
    model = quantized(random_causal_lm(0, vocab_size=VOCAB, max_seq_len=64, expansion_ratio=16), fmt, "int8")
    assert model.transformer.blocks[0].ffn.down_proj.cols >= decode_step.Q8_GEMM_MIN_K

    def gap(plan_min_k):
        monkeypatch.setattr(decode_step, "Q8_GEMM_MIN_K", plan_min_k)
        cfg = model.config
        caches = [PagedKVCache(cfg.n_layers, cfg.kv_n_heads, cfg.head_dim, block_size=4, num_blocks=16)
                  for _ in range(2)]
        ids = torch.randint(0, VOCAB, (20,), generator=torch.Generator().manual_seed(1))
        out = []
        for c, cache in enumerate(caches):
            seq = cache.match_prefix([])
            cache.grow(seq, 20)
            step = PagedStep(cache, [seq], [0], [20])
            rows = torch.arange(20)
            if c == 0:
                out.append(native_logits(build_plan(model, cache), ids, step, rows))
            else:
                with torch.inference_mode():
                    out.append(model.forward_paged(ids, step, rows))
        return (out[0] - out[1]).abs().max().item() / out[1].abs().max().item()

    with ops.use_amx(amx):
        shipped, never = gap(decode_step.Q8_GEMM_MIN_K), gap(0)
    if amx:  # a float32-ulp gap between the paths' layer norms can move a bf16 operand by one bf16 ulp
        assert shipped * 10 < never and shipped <= 1e-3, (shipped, never)
    else:
        assert shipped <= 1e-4 < never, (shipped, never)


def test_step_profile_counts_every_step_and_op(tmp_path):
    """MPT_LITE_STEP_PROFILE=1 (read once, in a fresh process): at exit, the prompt step and each decode step
    counted apart, every op of the layers listed, and a rate for each matmul."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "run.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from checkpoints import quantized, random_causal_lm
from mpt_lite.runtime.engine import Engine
model = quantized(random_causal_lm(0, vocab_size={VOCAB}, max_seq_len=256), "int4", "int8")
engine = Engine(model, num_blocks=64, block_size=4, native_step=True)
engine.add_request(list(range(5, 17)), 7)
steps = 0
while engine.has_unfinished():
    engine.step()
    steps += 1
print(steps)
""")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "MPT_LITE_STEP_PROFILE": "1"})
    assert run.returncode == 0, run.stderr
    steps = int(run.stdout.split()[-1])
    counts = {kind: int(n) for n, kind in re.findall(r"\[mpt_lite step\] (\d+) (prompt|decode) steps", run.stderr)}
    assert counts == {"prompt": 1, "decode": steps - 1}, run.stderr
    for op in ("norms", "Wqkv", "attention", "out_proj", "up_proj", "gelu", "down_proj", "logits"):
        assert re.search(rf"^  {op} +\d+\.\d+ ms a step", run.stderr, re.M), (op, run.stderr)
    assert len(re.findall(r"GB/s of weights", run.stderr)) == 2 * 5, run.stderr  # 4 matmuls + logits, each kind
