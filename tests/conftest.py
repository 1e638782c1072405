import os

# Tiny models on a busy 2-core machine: torch's threads spinning against each other can make
# small matmuls hundreds of times slower, so tests pin torch to one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402

from mpt_lite import ops  # noqa: E402
from mpt_lite.kernels import decode_step, quant_ops  # noqa: E402


@pytest.fixture
def float_activations(monkeypatch):
    """Float32 activations in every quantized matmul, per-op and native (no q8 rounding of activations, no
    bf16 operands on AMX tiles), so that two paths over the same weights agree to float32 rounding."""
    monkeypatch.setattr(quant_ops, "use_q8", lambda q8, rows, gemm_k=None: bool(q8))
    monkeypatch.setattr(decode_step, "Q8_MAX_ROWS", 0)
    monkeypatch.setattr(decode_step, "Q8_GEMM_MIN_K", 0)
    with ops.use_amx(False):
        yield
