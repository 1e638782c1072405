#!/usr/bin/env bash
# All set-up, idempotent: a virtual environment in .venv, torch 2.13.0 (CPU build) when no torch is
# importable, the dependencies, and the C++ extension built in place (incrementally).
# Never installs a CUDA build of torch: the only torch it asks for is the "+cpu" release.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${MPT_LITE_VENV:-.venv}
log() { echo "[setup] $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

if ! "$PY" -c "import torch" 2>/dev/null; then
  log "installing torch 2.13.0 (CPU build)"
  if ! "${PIP[@]}" "torch==2.13.0+cpu" 2>/dev/null; then
    log "torch==2.13.0+cpu is not on the configured indexes; trying the PyTorch CPU index"
    "${PIP[@]}" --index-url https://download.pytorch.org/whl/cpu --retries 1 --timeout 30 "torch==2.13.0+cpu" || {
      log "could not install torch 2.13.0 (CPU). Install a CPU build of torch into $VENV yourself and rerun."
      exit 1
    }
  fi
fi

stamp="$VENV/.mpt_lite-deps"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing build tools and dependencies"
  "${PIP[@]}" setuptools wheel "pybind11>=2.12" "cmake>=3.18" ninja
  # --no-build-isolation: build with what is installed here (torch is not needed by the build)
  MPT_LITE_CUDA=${MPT_LITE_CUDA:-off} "${PIP[@]}" --no-build-isolation -e ".[test]"
  touch "$stamp"
fi

# CUDA sources are built only when a GPU is visible, unless MPT_LITE_CUDA says otherwise.
if [ -z "${MPT_LITE_CUDA:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then MPT_LITE_CUDA=auto; else MPT_LITE_CUDA=off; fi
fi
log "building the extension (MPT_LITE_CUDA=$MPT_LITE_CUDA)"
MPT_LITE_CUDA=$MPT_LITE_CUDA "$PY" setup.py --quiet build_ext --inplace >/dev/null
