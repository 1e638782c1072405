import os

# Tiny models on a busy 2-core machine: torch's threads spinning against each other can make
# small matmuls hundreds of times slower, so tests pin torch to one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

torch.set_num_threads(1)
