#!/usr/bin/env bash
# Installs llama-cpp-python (the llama.cpp parity test's peer) into the venv, building llama.cpp
# from source (CPU only) once per machine: the wheel is kept under
# ${MPT_LITE_WHEEL_CACHE:-~/.cache/mpt_lite/wheels}/<key>, where the key covers the version, the
# CMake flags, the Python ABI and this CPU's feature flags (GGML_NATIVE builds for this CPU, so a
# wheel from another machine is never reused). Exit status: 0 installed, 2 this machine cannot build
# it (no C++ compiler), 1 the build failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
# GGML_NATIVE turns on ggml's AMX path on CPUs that advertise AMX, and that path crashes here
# (SIGSEGV in batched Q4_0/Q8_0 evaluation after "amx repack tensor"; the single-token path works),
# so on such CPUs the compiler is told not to emit AMX: ggml then uses its AVX-512 repacked kernels,
# its fastest working path on this hardware.
if [ -z "${CMAKE_ARGS:-}" ]; then
  CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF"
  if grep -qm1 -w amx_tile /proc/cpuinfo 2>/dev/null; then
    noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CMAKE_ARGS="$CMAKE_ARGS -DCMAKE_C_FLAGS='$noamx' -DCMAKE_CXX_FLAGS='$noamx'"
  fi
fi
export CMAKE_ARGS
log() { echo "[llama.cpp] $*" >&2; }

if ! command -v "${CXX:-c++}" >/dev/null 2>&1 || ! command -v "${CC:-cc}" >/dev/null 2>&1; then
  log "no C/C++ compiler: llama-cpp-python cannot be built here"
  exit 2
fi

cpu=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || uname -m)
abi=$("$PY" -c "import sys; print(sys.implementation.cache_tag)")
key=$(printf '%s\n' "$VERSION" "$CMAKE_ARGS" "$abi" "$cpu" | sha256sum | cut -c1-16)
cache=${MPT_LITE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mpt_lite/wheels}/llama-cpp-python-$key
# The build in the venv is the one wanted when its version and key match (an older build of the same
# version, e.g. one with AMX, is replaced).
stamp="$("$PY" -c "import sys; print(sys.prefix)")/.llama-cpp-python-key"
installed=$("$PY" -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))" 2>/dev/null || true)
if [ "$installed" = "$VERSION" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$key" ]; then
  log "llama-cpp-python $VERSION already installed ($CMAKE_ARGS)"
  exit 0
fi
wheel=$(ls "$cache"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  log "building llama-cpp-python $VERSION from source ($CMAKE_ARGS); about 14 CPU-minutes (~7 min on 2 idle cores)"
  start=$SECONDS
  mkdir -p "$cache"
  # --no-cache-dir: pip's own wheel cache is keyed by the sdist, not by CMAKE_ARGS
  "$PY" -m pip wheel --quiet --disable-pip-version-check --no-cache-dir --no-deps "llama-cpp-python==$VERSION" -w "$cache" ||
    { rm -rf "$cache"; log "the build failed"; exit 1; }
  wheel=$(ls "$cache"/llama_cpp_python-*.whl)
  log "built in $((SECONDS - start)) s, cached as $wheel"
else
  log "using the cached build $wheel"
fi
if [ "$installed" = "$VERSION" ]; then  # another build of this version: replace it (its deps are there)
  "$PY" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
else
  "$PY" -m pip install --quiet --disable-pip-version-check "$wheel"
fi
echo "$key" > "$stamp"
