"""Peak resident memory while quantizing a checkpoint as it loads (issue 3):
peak <= quantized size + largest source tensor in float32 + what `import torch, mpt_lite` costs."""
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import mpt_lite

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "import resource, torch, mpt_lite; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
LOAD = """
import json, resource, sys, torch, mpt_lite
import mpt_lite.hub.loading, safetensors, tqdm.auto  # what loading imports, so the reset below sees it
def status_kb(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
# Building a model on the meta device loads torch's meta kernels (a fixed ~80 MB of Python modules,
# whatever the model's size): a tiny one first, so that cost counts with the imports.
with torch.device("meta"):
    mpt_lite.MptForCausalLM(mpt_lite.MptConfig(d_model=8, n_heads=2, n_layers=1, vocab_size=8))
mpt_lite.ops.num_threads()  # the kernels' thread pool, started once per process
# Importing torch has a transient peak above its steady RSS that would hide the load's own peak:
# reset the high-water mark (Linux clear_refs 5) and measure the load from the RSS after import.
reset = True
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    reset = False
after_import = status_kb("VmRSS")
m = mpt_lite.MptForCausalLM.from_pretrained(sys.argv[1], bits=4)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
hwm = status_kb("VmHWM")  # reset by clear_refs, unlike ru_maxrss
size = sum(t.numel() * t.element_size() for t in m.state_dict().values())
print(json.dumps({"peak_kb": peak, "hwm_kb": hwm, "model_bytes": size, "after_import_kb": after_import,
                  "reset": reset}))
"""


def run(code, *args):
    env = {"MPT_LITE_NUM_THREADS": "2", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_peak_rss_while_quantizing_a_bf16_checkpoint(tmp_path):
    config = mpt_lite.MptConfig(d_model=1024, n_heads=8, n_layers=8, vocab_size=4096, max_seq_len=64)
    gen = torch.Generator().manual_seed(0)
    names = {"transformer.wte.weight": (4096, 1024), "transformer.norm_f.weight": (1024,)}
    for i in range(8):
        b = f"transformer.blocks.{i}."
        names.update({b + "norm_1.weight": (1024,), b + "norm_2.weight": (1024,),
                      b + "attn.Wqkv.weight": (3072, 1024), b + "attn.out_proj.weight": (1024, 1024),
                      b + "ffn.up_proj.weight": (4096, 1024), b + "ffn.down_proj.weight": (1024, 4096)})
    shards, weight_map, largest, total = [{}], {}, 0, 0
    for name, shape in names.items():  # ~70 MB bf16 shards, as on the hub
        if sum(t.numel() * 2 for t in shards[-1].values()) > 70e6:
            shards.append({})
        shards[-1][name] = (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)
        largest = max(largest, shards[-1][name].numel() * 4)
        total += shards[-1][name].numel() * 2
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(tmp_path / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    del shards
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(config.to_json_string())
    assert total > 200e6

    base_kb = int(run(BASELINE))
    got = json.loads(run(LOAD, str(tmp_path)))
    bound_kb = base_kb + (got["model_bytes"] + largest) / 1024
    print(f"\n[peak-rss] checkpoint {total / 1e6:.0f} MB bf16 -> {got['model_bytes'] / 1e6:.0f} MB 4-bit; "
          f"peak {got['peak_kb'] / 1024:.0f} MiB, bound {bound_kb / 1024:.0f} MiB "
          f"(import {base_kb / 1024:.0f} MiB + largest fp32 tensor {largest / 2**20:.0f} MiB)")
    assert got["peak_kb"] <= bound_kb
    if got["reset"]:
        # The sharper form: from the RSS right after import (no import transient to hide in), with
        # 16 MiB for the module objects, the read buffer's rounding and allocator fragmentation.
        sharp_kb = got["after_import_kb"] + (got["model_bytes"] + largest) / 1024 + 16 * 1024
        print(f"[peak-rss] after reset: peak (VmHWM) {got['hwm_kb'] / 1024:.0f} MiB <= "
              f"{got['after_import_kb'] / 1024:.0f} + quantized + largest + 16 = {sharp_kb / 1024:.0f} MiB")
        assert got["hwm_kb"] <= sharp_kb
