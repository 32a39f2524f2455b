#!/usr/bin/env bash
# The GPU checks, in one call, on a host where torch sees a GPU and the project builds (a GPU CI
# runner or a bootstrapped GPU node; see README.md for why not the lent device machine):
#   1. kernels_test: each CUDA kernel against its CPU twin and the eager formula;
#   2. tensor_parallel_nccl_test: a one-rank NCCL group all-reduces CUDA tensors;
#   3. tests/serving/test_devices.py: workers serving on --device cuda through the gateway equal
#      transformers' greedy, and on two GPUs a two-rank replica over NCCL (their `paged` attention
#      runs the CUDA paged attention kernel);
#   4. kernels_cuda_bench: each CUDA kernel against its eager ops (time, bandwidth as a fraction of
#      the device-to-device copy, error against float64), paged decode against sdpa; its table,
#      with the card named, becomes kernels/RESULTS.md (only this script writes that file);
#   5. tests/image/test_image_processors_cuda.py: `flotilla process-image --device cuda` against
#      transformers' fast processors on the GPU and our CPU path; its images/s rows go to RESULTS.md.
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

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
# As run, keeping the command's output in a file as well.
run_into() {
  local file=$1
  shift
  echo "== $*"
  "$@" > "$file"
  local code=$?
  cat "$file"
  echo "== exit $code: $*"
  if [[ $code -ne 0 && $status -eq 0 ]]; then status=$code; fi
  return $code
}
run_into "$scratch/kernels.md" "$python" "$repository/tools/bench/kernels_cuda.py" --build-dir "$build_dir"
kernels_status=$?
run_into "$scratch/images.log" env FLOTILLA_BUILD_DIR="$build_dir" "$python" -m pytest \
  "$repository/tests/image/test_image_processors_cuda.py" -v -rs -s -p no:cacheprovider
if [[ $kernels_status -eq 0 ]] && grep -q '^| ' "$scratch/kernels.md"; then
  {
    echo "# kernels/RESULTS.md"
    echo
    echo "Written by \`tools/gpu/check.sh\` on a GPU host; never by hand."
    echo
    echo "- card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
    echo "- commit: $(git -C "$repository" rev-parse --short HEAD 2>/dev/null || echo unknown)," \
      "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "## CUDA kernels (\`tools/bench/kernels_cuda.py\`: \`build/bin/kernels_cuda_bench\`)"
    echo
    cat "$scratch/kernels.md"
    if grep -q '^| image processor' "$scratch/images.log"; then
      echo
      echo "## Image processors on CUDA (\`tests/image/test_image_processors_cuda.py\`), images/s"
      echo
      echo "| processor | batch | Flotilla | transformers fast | ratio |"
      echo "| --- | --- | ---: | ---: | ---: |"
      grep '^| image processor' "$scratch/images.log"
    fi
  } > "$repository/kernels/RESULTS.md"
  echo "== wrote $repository/kernels/RESULTS.md"
fi
exit $status
