#!/usr/bin/env python
"""A static throughput model of a kernel's inner loops: compiles one source file of csrc/ to
assembly (the extension's own flags for that ISA), takes from every matching function the shortest
loop that holds a given instruction (its innermost hot loop), and runs llvm-mca on it for a CPU
model. Prints the predicted cycles per loop iteration and how busy each execution pipe is.

For when timings are too noisy to tell two variants apart and the machine (a VM) exposes no hardware
counters: which pipe binds, and whether a change moves the total or only moves the pressure.

    python benchmarks/kernel_mca.py                              # the AVX2 int4 / nf4 pair kernel on Zen 3
    python benchmarks/kernel_mca.py --mcpu skylake --source csrc/cpu/quant_q8_pairs_avx2.cpp
    python benchmarks/kernel_mca.py --source /tmp/variant.cpp --isa avx2    # a variant of the same file

Needs llvm-mca (Debian: llvm) and the C++ compiler the extension builds with.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ISAS = ("avx2", "avx512", "amx")


def isa_flags(isa: str) -> list[str]:
    """The compile options CMakeLists.txt gives a *_<isa>.cpp file (read from it, so they cannot drift)."""
    text = (ROOT / "CMakeLists.txt").read_text()
    avx512 = re.search(r'set\(AVX512_FLAGS "([^"]+)"\)', text).group(1)
    # `src MATCHES "_<isa>\\.cpp$")` then `set_source_files_properties(... COMPILE_OPTIONS "<options>")`
    rule = re.search(rf'"_{isa}\\\\\.cpp\$"\)\s*set_source_files_properties\([^"]*"([^"]+)"', text)
    options = rule.group(1)
    return options.replace("${AVX512_FLAGS}", avx512).split(";")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=ROOT / "csrc/cpu/quant_q8_pairs_avx2.cpp")
    p.add_argument("--isa", choices=ISAS, default=None,
                   help="the flags of which *_<isa>.cpp files (default: from the source's name)")
    p.add_argument("--function", default="pair_rows<", help="demangled function names containing this")
    p.add_argument("--instruction", default="vpmaddubsw", help="the loop chosen is the shortest one holding it")
    p.add_argument("--mcpu", default="znver3", help="llvm-mca's CPU model (znver3, znver2, skylake, alderlake, ...)")
    p.add_argument("--cxx", default="c++")
    return p.parse_args()


def functions(asm: str, pattern: str) -> dict[str, list[str]]:
    """Demangled function name -> its assembly lines (label to .cfi_endproc)."""
    out, name, body = {}, None, []
    for line in asm.split("\n"):
        if not line.startswith(("\t", ".", " ")) and line.endswith(":"):
            name, body = (line[:-1], []) if pattern in line else (None, [])
        elif name is not None:
            body.append(line)
            if line.strip() == ".cfi_endproc":
                out[name], name = body, None
    return out


def hot_loop(body: list[str], instruction: str) -> list[str] | None:
    """The instructions of the shortest backward-jump loop that holds `instruction`."""
    labels = {line[:-1]: i for i, line in enumerate(body) if re.match(r"^\.L\w+:$", line)}
    best = None
    for i, line in enumerate(body):
        m = re.match(r"^\s+j\w+\s+(\.L\w+)$", line)
        if m and labels.get(m.group(1), i) < i:
            seg = body[labels[m.group(1)]:i + 1]
            if any(instruction in s for s in seg) and (best is None or len(seg) < len(best)):
                best = seg
    return None if best is None else [s for s in best if s.startswith("\t") and not s.startswith("\t.")]


def mca(loop: list[str], mcpu: str) -> tuple[float, dict[str, float]]:
    with tempfile.NamedTemporaryFile("w", suffix=".s") as f:
        f.write("\n".join(loop) + "\n")
        f.flush()
        run = subprocess.run(["llvm-mca", f"-mcpu={mcpu}", "-iterations=200", f.name], capture_output=True, text=True)
    if run.returncode:  # e.g. AVX-512 code on a CPU model without it
        sys.exit(f"llvm-mca -mcpu={mcpu} failed: {run.stderr.strip()[-500:]}")
    r = run.stdout
    cycles = int(re.search(r"Total Cycles:\s+(\d+)", r).group(1)) / 200
    names = dict(re.findall(r"^\[([\d.]+)\]\s+- (\S+)", r, re.M))
    head, values = r.split("Resource pressure per iteration:\n")[1].split("\n")[:2]
    pressure = {names[k.strip("[]")]: float(v) for k, v in zip(head.split(), values.split()) if v != "-"}
    return cycles, pressure


def main() -> None:
    args = parse_args()
    if not shutil.which("llvm-mca"):
        sys.exit("llvm-mca not found (Debian: apt install llvm)")
    isa = args.isa or next((i for i in ISAS if args.source.stem.endswith(f"_{i}")), None)
    if isa is None:
        sys.exit(f"{args.source.name} does not end in _avx2 / _avx512 / _amx: pass --isa")
    cmd = [args.cxx, "-DMPT_LITE_X86_SIMD=1", f"-I{ROOT / 'csrc'}", "-O3", "-std=gnu++17", "-fPIC",
           *isa_flags(isa), "-S", "-o", "-", str(args.source)]
    asm = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    asm = subprocess.run(["c++filt"], input=asm, capture_output=True, text=True, check=True).stdout
    found = functions(asm, args.function)
    if not found:
        sys.exit(f"no function containing {args.function!r} in {args.source} (inlined everywhere?)")
    print(f"llvm-mca -mcpu={args.mcpu}, {args.source.name}: the hot loop of each {args.function!r} function")
    for name, body in found.items():
        loop = hot_loop(body, args.instruction)
        if loop is None:
            continue
        cycles, pressure = mca(loop, args.mcpu)
        top = sorted(pressure.items(), key=lambda kv: -kv[1])[:6]
        short = name[name.find(args.function):]
        short = short[:short.find(">(") + 1] if ">(" in short else short
        print(f"  {short}: {len(loop)} instructions, {sum(args.instruction in s for s in loop)} x "
              f"{args.instruction}, {cycles:.1f} cycles an iteration; busiest: "
              + ", ".join(f"{k} {v:.1f}" for k, v in top))


if __name__ == "__main__":
    main()
