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
export CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_CUDA=OFF}
log() { echo "[llama.cpp] $*" >&2; }

installed=$("$PY" -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))" 2>/dev/null || true)
if [ "$installed" = "$VERSION" ]; then
  log "llama-cpp-python $VERSION already installed"
  exit 0
fi
if ! command -v "${CXX:-c++}" >/dev/null 2>&1 || ! command -v "${CC:-cc}" >/dev/null 2>&1; then
  log "no C/C++ compiler: llama-cpp-python cannot be built here"
  exit 2
fi

cpu=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || uname -m)
abi=$("$PY" -c "import sys; print(sys.implementation.cache_tag)")
key=$(printf '%s\n' "$VERSION" "$CMAKE_ARGS" "$abi" "$cpu" | sha256sum | cut -c1-16)
cache=${MPT_LITE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mpt_lite/wheels}/llama-cpp-python-$key
wheel=$(ls "$cache"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  log "building llama-cpp-python $VERSION from source ($CMAKE_ARGS); about 14 CPU-minutes (~7 min on 2 idle cores)"
  start=$SECONDS
  mkdir -p "$cache"
  "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps "llama-cpp-python==$VERSION" -w "$cache" ||
    { rm -rf "$cache"; log "the build failed"; exit 1; }
  wheel=$(ls "$cache"/llama_cpp_python-*.whl)
  log "built in $((SECONDS - start)) s, cached as $wheel"
else
  log "using the cached build $wheel"
fi
"$PY" -m pip install --quiet --disable-pip-version-check "$wheel"
