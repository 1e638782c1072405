"""The `mpt-lite` command, run as a user runs it: a subprocess, arguments and stdin in,
stdout/stderr and the exit status out."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mpt_lite

ROOT = Path(__file__).resolve().parent.parent
FOLDER = mpt_lite.default_model_path()


def run(*args, stdin=None, timeout=120, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("MPT_LITE_DEBUG", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "mpt_lite.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def assert_one_line_error(proc, *words):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mpt-lite: error:")]
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_generate_streams_python_and_reports_speed():
    p = run("generate", "def fibonacci(n):", "--bits", "none", "--max-new-tokens", "64", "--seed", "0")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("def fibonacci(n):")
    completion = p.stdout[len("def fibonacci(n):"):]
    assert completion.strip() and ("return" in completion or "(" in completion)
    # what the model writes (test_default_model.py judges that): the library's own greedy text, streamed
    assert completion == mpt_lite.load(bits=None).generate("def fibonacci(n):", max_new_tokens=64) + "\n"
    assert "tokens/s" in p.stderr


def test_generate_reads_stdin_and_greedy_is_reproducible():
    a = run("generate", "--bits", "none", "-n", "12", "--temperature", "0", "--no-echo", stdin="import os\n")
    b = run("generate", "-", "--bits", "none", "-n", "12", "--temperature", "0", "--no-echo", stdin="import os\n")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout and a.stdout.strip()
    # the speed line counts the tokens the model generated, as generate() on token ids returns them
    model = mpt_lite.load(bits=None)
    prompt = torch.tensor([model.tokenizer.encode("import os")])
    new = model.generate(prompt, max_new_tokens=12).shape[1] - prompt.shape[1]
    assert f"] {new} tokens in" in a.stderr, (new, a.stderr)
    expected = mpt_lite.load(bits=None).generate("import os", max_new_tokens=12)
    assert a.stdout == expected + "\n"


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    assert_one_line_error(run("generate", "x", "--bits", "none", "--model", str(tmp_path / "nope")), "nope")
    assert_one_line_error(run("generate", "   ", "--bits", "none"), "empty")
    assert_one_line_error(run("generate", "x", "--bits", "8", "--quant-type", "nf4"), "--quant-type")
    p = run("generate", "x", "--bits", "none", "--model", str(tmp_path / "nope"), env_extra={"MPT_LITE_DEBUG": "1"})
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_sampling_options_are_checked_even_when_greedy_ignores_them():
    for args, words in ((("--temperature", "nan"), ("temperature", "nan")), (("--top-p", "2"), ("top_p", "2.0")),
                        (("--top-k", "-3"), ("top_k", "-3")), (("--temperature", "-1"), ("temperature", "-1.0"))):
        p = run("generate", "x", "--bits", "none", *args)
        assert_one_line_error(p, *words)
        assert "loading" not in p.stderr  # refused before the model is loaded
    assert_one_line_error(run("chat", "--bits", "none", "--repetition-penalty", "0"), "repetition_penalty")


def test_info_reports_shapes_sizes_and_kernels():
    transformers = pytest.importorskip("transformers")
    p = run("info", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    cfg = transformers.MptConfig.from_pretrained(str(FOLDER))
    import torch

    with torch.device("meta"):
        ref = transformers.MptForCausalLM(cfg)
    n = sum(t.numel() for t in ref.parameters())  # transformers ties lm_head to wte: counted once
    assert info["parameters"] == n
    assert info["bytes"]["fp32"] == 4 * n and info["bytes"]["bf16"] == 2 * n
    # the Linear layers of the blocks plus the embedding, in int8: one byte each + an fp32 scale per row
    quant = {k: tuple(v.shape) for k, v in ref.named_parameters() if v.dim() == 2}
    q = sum(math.prod(s) for s in quant.values())
    rows = sum(s[0] for s in quant.values())
    assert info["bytes"]["int8"] == q + 4 * rows + 4 * (n - q)
    assert info["bytes"]["nf4"] < info["bytes"]["int8"] < info["bytes"]["bf16"]
    # 4-bit keeps the tied embedding at int8: its cost over int4 codes + a scale per group of 32
    V, d = tuple(ref.transformer.wte.weight.shape)
    G = -(-d // 32)
    assert info["default_4bit"] == "int4"
    # int4 group scales are fp16 (2 bytes per group of 32)
    assert info["embedding_int8_extra_bytes"]["int4"] == (V * d + 4 * V) - (V * G * 16 + 2 * V * G)
    # int6: 24 bytes of codes and a 2-byte scale per group of 32
    assert info["embedding_int6_saved_bytes"]["int4"] == (V * d + 4 * V) - (V * G * 24 + 2 * V * G)
    blocks = {k: s for k, s in quant.items() if "blocks" in k}
    nb = sum(math.prod(s) for s in blocks.values())
    assert info["block_bits_per_weight"]["int4"] == 4.5 and info["block_bits_per_weight"]["nf4"] == 4.5
    assert info["block_bits_per_weight"]["int8"] == 8 * (nb + 4 * sum(s[0] for s in blocks.values())) / nb
    assert info["kernel_variant"] in info["kernel_variants"]
    assert set(info["cpu_features"]) >= {"avx2", "avx512f"}
    assert info["tokenizer_tokens"] < info["config"]["vocab_size"]
    text = run("info")
    assert text.returncode == 0 and "parameters" in text.stdout and "kernels" in text.stdout
    assert f"{n:,}" in text.stdout
    assert "int4 by default" in text.stdout and "embedding stays int8" in text.stdout
    assert "int4 4.50" in text.stdout
    # K and V of a token over every layer: head_dim values each, per kv head; int8 + a float32 scale a row,
    # int4 half a byte a value + a float32 scale per 32
    rows = 2 * cfg.n_layers * cfg.n_heads
    hd = cfg.d_model // cfg.n_heads
    assert info["kv_bytes_per_token"] == {"float32": rows * hd * 4, "bfloat16": rows * hd * 2, "float16": rows * hd * 2,
                                          "int8": rows * (hd + 4), "int4": rows * (hd // 2 + 4 * (hd // 32))}
    assert "kv cache" in text.stdout and "--kv-dtype" in text.stdout


def test_quantize_with_embedding_bits(tmp_path):
    dst = tmp_path / "q"
    p = run("quantize", str(FOLDER), str(dst), "--bits", "4", "--quant-type", "nf4", "--embedding-bits", "4")
    assert p.returncode == 0, p.stderr
    from safetensors import safe_open

    with safe_open(str(dst / "model.safetensors"), framework="pt") as sf:
        meta = json.loads(sf.metadata()["mpt_lite_quant"])
    assert meta["format"] == "nf4" and meta["formats"]["transformer.wte"] == "nf4"
    assert_one_line_error(run("generate", "x", "--bits", "8", "--embedding-bits", "4"), "--embedding-bits")
    dst6 = tmp_path / "q6"
    p = run("quantize", str(FOLDER), str(dst6), "--bits", "4", "--embedding-bits", "6")
    assert p.returncode == 0, p.stderr
    with safe_open(str(dst6 / "model.safetensors"), framework="pt") as sf:
        meta = json.loads(sf.metadata()["mpt_lite_quant"])
    assert meta["format"] == "int4" and meta["formats"]["transformer.wte"] == "int6" and meta["version"] == 8
    p = run("generate", "hello", "-m", str(dst6), "--max-new-tokens", "3")
    assert p.returncode == 0 and p.stdout.strip(), p.stderr


def test_quantize_with_group_size(tmp_path):
    dst = tmp_path / "q"
    p = run("quantize", str(FOLDER), str(dst), "--bits", "4", "--group-size", "64")
    assert p.returncode == 0, p.stderr
    from safetensors import safe_open

    with safe_open(str(dst / "model.safetensors"), framework="pt") as sf:
        meta = json.loads(sf.metadata()["mpt_lite_quant"])
        scales = sf.get_tensor("transformer.blocks.0.ffn.down_proj.weight_scales")
    assert meta["format"] == "int4" and meta["group_size"] == 64 and meta["version"] == 7
    assert scales.shape[1] == math.ceil(mpt_lite.MptConfig.from_pretrained(FOLDER).d_model * 4 / 64)
    p = run("generate", "def add(a, b):", "-m", str(dst), "-n", "8", "--no-stream")
    assert p.returncode == 0, p.stderr
    assert_one_line_error(run("generate", "x", "--bits", "4", "--quant-type", "nf4", "--group-size", "64"),
                          "--group-size")


def test_chat_loop_with_history_reset_and_exit():
    p = run("chat", "--bits", "none", "-n", "8", "--temperature", "0",
            stdin="def add(a, b):\nand now subtract\n/reset\nclass Foo:\n/exit\nnever read\n")
    assert p.returncode == 0, p.stderr
    assert "history cleared" in p.stderr
    model = mpt_lite.load(bits=None)
    kw = dict(max_new_tokens=8)
    first = model.chat([{"role": "user", "content": "def add(a, b):"}], **kw)
    second = model.chat([{"role": "user", "content": "def add(a, b):"}, {"role": "assistant", "content": first},
                         {"role": "user", "content": "and now subtract"}], **kw)
    after_reset = model.chat([{"role": "user", "content": "class Foo:"}], **kw)
    assert p.stdout == first + "\n" + second + "\n" + after_reset + "\n"


def test_chat_ends_on_eof():
    p = run("chat", "--bits", "none", "-n", "4", "--temperature", "0", stdin="")
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""


def test_quantize_refuses_to_overwrite(tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    p = run("quantize", str(FOLDER), str(dst), "--bits", "4")
    assert_one_line_error(p, "--force")
    assert [f.name for f in dst.iterdir()] == ["keep.txt"]
    assert_one_line_error(run("quantize", str(FOLDER), str(FOLDER), "--bits", "8", "--force"), "source")


def test_kv_dtype_flag_reaches_the_engine_and_is_scoped(monkeypatch, capsys):
    """--kv-dtype int4 builds the generate command's engine with the 4-bit cache (recorded where the engine asks
    for its default dtype), prints what MPT_LITE_KV_DTYPE=int4 prints, and leaves the environment as it was."""
    import torch

    from mpt_lite import cli
    from mpt_lite.runtime import engine as engine_mod
    from mpt_lite.runtime.kv_budget import KV_DTYPE_ENV, KV_DTYPE_NAMES

    assert cli.KV_DTYPE_CHOICES == tuple(KV_DTYPE_NAMES) and cli.KV_DTYPE_ENV == KV_DTYPE_ENV
    monkeypatch.delenv(KV_DTYPE_ENV, raising=False)
    seen = []
    real = engine_mod.kv_dtype_of
    monkeypatch.setattr(engine_mod, "kv_dtype_of", lambda m: seen.append(real(m)) or seen[-1])
    assert cli.main(["generate", "import os", "-n", "8", "--no-stream", "--no-echo", "--kv-dtype", "int4"]) == 0
    assert seen and set(seen) == {torch.quint4x2}
    assert KV_DTYPE_ENV not in os.environ
    flag = capsys.readouterr().out
    p = run("generate", "import os", "-n", "8", "--no-stream", "--no-echo", env_extra={KV_DTYPE_ENV: "int4"})
    assert p.returncode == 0, p.stderr
    assert p.stdout == flag
    bad = run("generate", "x", "--kv-dtype", "int3")
    assert bad.returncode == 2 and "int3" in bad.stderr
