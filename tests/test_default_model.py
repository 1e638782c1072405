"""The embedded default model: ships in the package, loads with no name, writes Python."""
import json
import math

import pytest
import torch

import mpt_lite
from python_text import assert_plausible_python

FOLDER = mpt_lite.default_model_path()


def test_shipped_files_are_complete_and_small():
    names = {p.name for p in FOLDER.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json"} <= names
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) <= 25e6
    cfg = json.loads((FOLDER / "config.json").read_text())
    assert cfg["architectures"] == ["MPTForCausalLM"] and cfg["model_type"] == "mpt"
    assert cfg["attn_config"]["alibi"] is True and cfg["no_bias"] is True
    assert cfg["vocab_size"] % 64 == 0


def test_loads_with_no_name_and_matches_transformers():
    transformers = pytest.importorskip("transformers")
    model = mpt_lite.load(bits=None)
    assert isinstance(model, mpt_lite.MptForCausalLM) and model.tokenizer is not None
    assert len(model.tokenizer) < model.config.vocab_size  # padded rows beyond the tokenizer
    ref = transformers.MptForCausalLM.from_pretrained(str(FOLDER), dtype=torch.float32).eval()
    ids = torch.tensor([model.tokenizer.encode("import os\nimport sys\n\ndef main():\n")])
    with torch.no_grad():
        diff = (model(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max()
    assert diff < 1e-4


# Function heads none of which is in the training data as such (the README's main job is the first).
CODE_PROMPTS = ["def fibonacci(n):", "def is_prime(n):", "def read_lines(path):", "def merge_dicts(a, b):",
                "def count_words(text):", "def reverse_string(s):", "def factorial(n):", "def flatten(items):"]


def test_generates_python():
    """Greedy continuations of several function heads: most are plausible Python. One greedy sample of
    a 12 M-parameter model is a coin flip (the chat fine-tunes have passed 4-5 of these 8, each a
    different 4-5), so the test asks for half, which untrained or broken weights do not reach."""
    model = mpt_lite.load(bits=None)
    plausible = []
    for prompt in CODE_PROMPTS:
        completion = model.generate(prompt, max_new_tokens=64)  # the text after the prompt
        assert isinstance(completion, str) and completion.strip()
        try:
            assert_plausible_python(prompt, completion)
            plausible.append(prompt)
        except AssertionError:
            pass
    assert len(plausible) >= len(CODE_PROMPTS) // 2, f"plausible Python for {plausible} only"


def test_held_out_style_text_is_far_better_than_chance():
    """Python the model never saw (not from the stdlib): per-token perplexity far below the
    vocabulary size (uniform guessing)."""
    model = mpt_lite.load(bits=None)
    code = ("def add_numbers(first, second):\n    \"\"\"Return the sum of two numbers.\"\"\"\n"
            "    result = first + second\n    return result\n\n\nclass Counter:\n    def __init__(self):\n"
            "        self.count = 0\n\n    def increment(self):\n        self.count += 1\n")
    ids = torch.tensor([model.tokenizer.encode(code)])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert math.exp(float(loss)) < 40 < len(model.tokenizer)
