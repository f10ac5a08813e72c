#!/usr/bin/env bash
# The GPU checks of ponder in one run, on a machine with an NVIDIA GPU, nvcc, PyTorch and Triton:
#   1. build the extension with the CUDA kernels (editable install, no dependency resolution);
#   2. the CUDA kernel tests (tests/ops/test_cuda_kernels.py) against the PyTorch references, and
#      the native core's refusals built with this machine's compiler (every C++ exception must
#      reach Python as ValueError / IndexError / TypeError / KVCacheFull, never a crash);
#   3. compute-sanitizer (memcheck, racecheck, synccheck) on tests/cuda_sanitize.py;
#   4. benchmarks/bench_attention.py --quick;
#   5. the Triton kernel tests (tests/triton, compiled for the GPU) and every other test marked gpu.
# Logs go to $OUT (default ./gpu-check). Each step has its own time limit, and none runs past
# PONDER_GPU_CHECK_SECONDS (default 560) from the start, so a hang cannot eat the rest; a step
# with no time left is counted as failed. PONDER_GPU_CHECK_SKIP lists steps to leave out (by log
# name: cuda_tests native_refusals sanitize bench_attention triton_tests gpu_tests); each is
# announced as skipped. Exit status: the number of failed steps.
#
#   PONDER_CUDA_ARCHS=90a bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
failed=0
deadline="${PONDER_GPU_CHECK_SECONDS:-560}"
step() { echo "::: $1 [$(date +%T)]"; }
run() {  # run NAME SECONDS CMD...: time-limited, logged to $OUT/NAME.log, tail shown
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS left=$((deadline - SECONDS))
  case " ${PONDER_GPU_CHECK_SKIP:-} " in *" $name "*)
    echo "--- $name: skipped (PONDER_GPU_CHECK_SKIP)"
    return 0 ;;
  esac
  if [ "$left" -lt 10 ]; then
    echo "--- $name: skipped, no time left"
    failed=$((failed + 1))
    return 124
  fi
  [ "$limit" -le "$left" ] || limit=$left
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "--- $name: exit $rc in $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  return $rc
}

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
"$PY" -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
nvcc --version | tail -2

step "build"
PONDER_CUDA=ON PONDER_CUDA_ARCHS="${PONDER_CUDA_ARCHS:-90a}" \
  run build 240 "$PY" -m pip install --no-build-isolation --no-deps -v -e . || exit 1
"$PY" -c "from ponder import _core; assert _core.CUDA_BUILT and _core.cuda_device_count() > 0; print('CUDA kernels built, devices:', _core.cuda_device_count())" || exit 1

step "CUDA kernels against the references"
run cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider -rf tests/ops/test_cuda_kernels.py

step "refusals of the native core (C++ exceptions reaching Python as ValueError / IndexError)"
run native_refusals 120 "$PY" -X faulthandler -m pytest -q -p no:cacheprovider -rf tests/test_page_table.py \
  tests/test_forest.py tests/test_attention_plan.py tests/test_bad_inputs.py tests/test_structure_stress.py \
  tests/ops/test_cuda_launchers.py tests/ops/test_attention_host.py tests/ops/test_shared_prefix_host.py \
  tests/ops/test_sampling_host.py tests/ops/test_linear_blocked.py tests/ops/test_linear_quant.py \
  tests/ops/test_rotary_kv_host.py tests/models/test_native_decoder.py

step "compute-sanitizer"
run sanitize 240 bash -c 'rc=0; for tool in memcheck racecheck synccheck; do
  echo "=== $tool"; compute-sanitizer --tool $tool --error-exitcode 1 --kernel-name kns=ponder \
    '"$PY"' tests/cuda_sanitize.py || rc=1; done; exit $rc'

step "bench_attention"
run bench_attention 150 "$PY" benchmarks/bench_attention.py --quick

step "Triton kernels against the references"
run triton_tests 150 "$PY" -m pytest -q -p no:cacheprovider -rf tests/triton

step "every other gpu test"
run gpu_tests 90 "$PY" -m pytest -q -p no:cacheprovider -rf -m gpu --continue-on-collection-errors \
  --deselect tests/ops/test_cuda_kernels.py tests/ops tests/test_token_beam.py tests/models/test_model_runtime.py

step "done: $failed failed step(s)"
exit "$failed"
