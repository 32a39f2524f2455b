#!/usr/bin/env bash
# The GPU checks, in one call, on a host where torch sees a GPU and the project builds (a GPU CI
# runner or a bootstrapped GPU node; see README.md for why not the lent device machine):
#   1. kernels_test: each CUDA kernel against its CPU twin and the eager formula;
#   2. tensor_parallel_nccl_test: a one-rank NCCL group all-reduces CUDA tensors;
#   3. tests/serving/test_devices.py: workers serving on --device cuda through the gateway equal
#      transformers' greedy, and on two GPUs a two-rank replica over NCCL.
# Prints each step's result; the exit status is the first failure's.
set -uo pipefail
repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build_dir="${FLOTILLA_BUILD_DIR:-$repository/build}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "check.sh: torch sees no GPU here; nothing to check" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

"$repository/tools/build" || exit 1
status=0
run() {
  echo "== $*"
  "$@"
  local code=$?
  echo "== exit $code: $*"
  if [[ $code -ne 0 && $status -eq 0 ]]; then status=$code; fi
}
run "$build_dir/kernels/kernels_test" --gtest_filter='CudaKernelTest.*'
run "$build_dir/models/tensor_parallel_nccl_test"
run env FLOTILLA_BUILD_DIR="$build_dir" "$python" -m pytest "$repository/tests/serving/test_devices.py" -v -rs \
  -p no:cacheprovider
exit $status
