"""The attention kernels' software prefetches survive compilation. GCC 12 deletes a loop whose body is
only __builtin_prefetch as dead code, and until 2026-12-02 every prefetch loop of the attention kernels was
missing from the built extension (decode attention at 2048 tokens ran ~1.7x slower); csrc/cpu/prefetch.h
issues them through asm volatile. This compiles each attention variant as the build does (-O3, its ISA
flags) to assembly and looks for the prefetch instructions."""
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CXX = shutil.which("c++") or shutil.which("g++")
X86 = platform.machine() in ("x86_64", "AMD64")


def build_flags() -> dict[str, list[str]]:
    """Each attention variant's ISA flags, as CMakeLists.txt gives them."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    avx512 = re.search(r'set\(AVX512_FLAGS "([^"]+)"\)', cmake).group(1)
    avx2_rule = cmake[cmake.index('src MATCHES "_avx2'):]
    avx2 = re.search(r'COMPILE_OPTIONS "([^"]+)"', avx2_rule).group(1)
    return {"attention_generic.cpp": [], "attention_avx2.cpp": avx2.split(";"),
            "attention_avx512.cpp": avx512.split(";")}


VARIANTS = build_flags()


@pytest.mark.skipif(CXX is None, reason="no C++ compiler on PATH")
@pytest.mark.skipif(not X86, reason="checks x86 prefetch instructions")
@pytest.mark.parametrize("source", list(VARIANTS))
def test_prefetch_instructions_are_in_the_compiled_kernel(source):
    cmd = [CXX, "-O3", "-std=c++17", f"-I{ROOT / 'csrc'}", *VARIANTS[source], "-S", "-o", "-",
           str(ROOT / "csrc" / "cpu" / source)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "unrecognized" in done.stderr:
        pytest.skip(f"the compiler does not take the {source} flags: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [ln.split() for ln in done.stdout.splitlines()]
    l2 = sum(1 for ln in lines if ln and ln[0] == "prefetcht1")  # next block towards L2: every variant
    assert l2 >= 1, f"{source}: no prefetcht1 left in the compiled kernel (prefetch loops deleted?)"
