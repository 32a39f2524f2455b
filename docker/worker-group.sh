#!/usr/bin/env bash
# flotilla-worker-group: starts one worker group — $FLOTILLA_TENSOR_PARALLEL_SIZE ranks of
# flotilla-worker in this container, rank r on GPU r — and lives and dies with them. It is the
# worker pods' entrypoint (helm/flotilla/templates/workers.yaml); the Kubernetes-facing side is rank
# 0's: its ports, probes and gateway registration. Every argument goes to every rank; ranks above 0
# listen on loopback only and keep their own data directory.
#
#   FLOTILLA_TENSOR_PARALLEL_SIZE=8 flotilla-worker-group --model=acme/llama@main --gateways=...
#
# With one rank it becomes flotilla-worker (exec). With several: SIGTERM/SIGINT go to every rank
# (each drains), and when any rank exits the others are stopped and the group exits with that
# rank's status, so the kubelet restarts the whole group — a tensor-parallel group missing a rank
# cannot serve.
#
# Environment: FLOTILLA_TENSOR_PARALLEL_SIZE (default 1), FLOTILLA_MASTER_PORT (default 29500, the
# c10d TCPStore rank 0 opens on loopback), FLOTILLA_WORKER_BINARY (default flotilla-worker on PATH).
set -euo pipefail

size="${FLOTILLA_TENSOR_PARALLEL_SIZE:-1}"
master_port="${FLOTILLA_MASTER_PORT:-29500}"
worker="${FLOTILLA_WORKER_BINARY:-flotilla-worker}"

if ! [[ "$size" =~ ^[1-9][0-9]*$ ]]; then
  echo "flotilla-worker-group: FLOTILLA_TENSOR_PARALLEL_SIZE: expected a positive integer but got '$size'" >&2
  exit 2
fi
if ((size == 1)); then
  exec "$worker" "$@"
fi

data_dir=""
for argument in "$@"; do
  case "$argument" in
    --data_dir=*) data_dir="${argument#--data_dir=}" ;;
  esac
done
data_dir="${data_dir:-${TMPDIR:-/tmp}/flotilla-worker-group}"

pids=()
stop_ranks() {
  local signal="$1"
  for pid in "${pids[@]}"; do
    kill "-$signal" "$pid" 2>/dev/null || true
  done
}
trap 'stop_ranks TERM' TERM
trap 'stop_ranks INT' INT

for ((rank = 0; rank < size; rank++)); do
  rank_flags=(--tensor_parallel_size="$size" --rank="$rank" --master_address=127.0.0.1 --master_port="$master_port")
  if ((rank > 0)); then
    mkdir -p "$data_dir/rank-$rank"
    # Later flags win (absl): ranks above 0 keep off the pod's ports and state.
    rank_flags+=(--grpc_listen=127.0.0.1:0 --http_listen=127.0.0.1:0 --data_dir="$data_dir/rank-$rank")
  fi
  "$worker" "$@" "${rank_flags[@]}" &
  pids+=("$!")
done

# The first rank to exit ends the group. `wait -n` also returns when a trapped signal arrives (with
# no rank exited): then keep waiting, the ranks are draining.
status=0
while true; do
  exited_pid=""
  wait -n -p exited_pid "${pids[@]}" && status=0 || status=$?
  if [[ -n "${exited_pid:-}" ]]; then break; fi
done
echo "flotilla-worker-group: rank with pid $exited_pid exited with status $status; stopping the group" >&2
stop_ranks TERM
for pid in "${pids[@]}"; do
  wait "$pid" 2>/dev/null || true
done
exit "$status"
