#!/usr/bin/env bash
# The CUDA check for a session that is lent a GPU (an H200 for ~15 minutes in all): build for
# sm_90 only, run every CUDA test, then a short benchmark (4-bit decode and prefill tokens/s on
# a synthetic 1.3B MPT against transformers in bf16 on the same GPU, medians), and print a table.
# Run from anywhere; everything it writes goes to $OUT (the device tool's folder) or /tmp.
#
#   run(command="bash benchmarks/cuda_device_check.sh", timeout_s=540)
#
# Budget: build ~20 s on its 16 cores, tests ~10 s, kernel benchmarks ~1-2 min, model benchmark
# ~2-4 min (estimates). Each stage has its own timeout; a failing stage is reported and the next
# still runs, and the script's exit status is the first failure's.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
OUTDIR="${OUT:-/tmp/mpt_lite_cuda_check}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-python3}"
status=0
stage() { echo; echo "==== $* ($(date +%H:%M:%S))"; }

stage "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
nvcc --version | tail -1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"

stage "build (sm_90 only)"
t0=$(date +%s)
if ! MPT_LITE_CUDA=on MPT_LITE_CUDA_ARCHS=90 MPT_LITE_BUILD_DIR=/tmp/mpt_lite_build_sm90 \
    timeout 420 "$PY" setup.py -q build_ext --inplace >"$OUTDIR/build.log" 2>&1; then
  tail -40 "$OUTDIR/build.log"
  echo "[check] BUILD FAILED"
  exit 1
fi
echo "[check] build ok in $(( $(date +%s) - t0 )) s"
"$PY" -c "import mpt_lite._C as C; assert C.with_cuda, 'not a CUDA build'; n = C.cuda_device_count(); print('[check] devices seen by mpt_lite:', n); assert n > 0"

stage "CUDA tests"
t0=$(date +%s)
set +e
timeout 300 "$PY" -m pytest -q -rs -p no:cacheprovider -o addopts="" \
  tests/test_quant_kernels.py tests/test_attention_kernels.py tests/test_cuda_model.py tests/test_cuda_graphs.py tests/test_dense_attention.py -k cuda \
  2>&1 | tee "$OUTDIR/tests.log" | tail -60
rc=${PIPESTATUS[0]}
set -e
echo "[check] CUDA tests rc=$rc in $(( $(date +%s) - t0 )) s"
if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi

stage "SASS of the GEMV (instruction mix of the nf4 / int4 M=1 kernels)"
so=$(ls mpt_lite/_C*.so | head -1)
for f in 1 2; do
  sym="_ZN3mpt4cuda16gemv_fast_kernelILNS0_3FmtE${f}ELi1EEEvNS0_2QWEPKfS5_Pf"
  echo "fmt $f:" $(cuobjdump --dump-sass --function "$sym" "$so" 2>/dev/null \
    | grep -oE "\b(LDG|LDS|LDL|STL|FFMA|PRMT|I2F|FADD|SHFL)[A-Z0-9._]*" | sort | uniq -c | tr '\n' ' ')
done || true

stage "kernel microbenchmarks (GEMV, prefill matmul)"
set +e
timeout 240 "$PY" benchmarks/bench_cuda_kernels.py --out "$OUTDIR/kernels.md" 2>&1 | tee "$OUTDIR/kernels.log" | tail -45
rc=${PIPESTATUS[0]}
set -e
echo "[check] kernel benchmark rc=$rc"
if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi

stage "model benchmark (synthetic 1.3B MPT)"
set +e
timeout 360 "$PY" benchmarks/bench_cuda.py --repeats 5 --new 64 --prefill 512 --profile ${BENCH_ARGS:-} \
  --out "$OUTDIR/bench.md" 2>&1 | tee "$OUTDIR/bench.log" | grep -v "^\s*$" | tail -40
rc=${PIPESTATUS[0]}
set -e
echo "[check] benchmark rc=$rc"
if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi

stage "done: status $status (logs in $OUTDIR)"
exit "$status"
