#!/usr/bin/env bash
# Start N cooperating `bipft pretrain` processes on this machine (127.0.0.1), one per
# process id, joined through jax.distributed. Useful to test multi-host code paths on CPU.
#
# Usage:  launch/local_multiprocess.sh N [--] <bipft pretrain arguments...>
#   e.g.  launch/local_multiprocess.sh 2 --config configs/pretrain/tiny.py --workdir /tmp/run
#
# Environment:
#   PORT=12355            coordinator port (process 0 listens on 127.0.0.1:$PORT)
#   DEVICES_PER_PROCESS=1 fake CPU devices per process (XLA_FLAGS); unset JAX_PLATFORMS to use GPUs
#   BIPFT_CMD="bipft"     the command to run (e.g. "python -m bipft_jax.cli")
#   LOG_DIR=./logs/local  where each process writes process_<i>.log (process 0 also prints)
#   DRY_RUN=1             print the commands instead of running them
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES [--] <bipft pretrain arguments...>" >&2
  exit 2
fi
num_processes=$1
shift
if [[ "${1:-}" == "--" ]]; then shift; fi

port=${PORT:-12355}
log_dir=${LOG_DIR:-./logs/local}
read -r -a cmd <<< "${BIPFT_CMD:-bipft}"
export JAX_PLATFORMS=${JAX_PLATFORMS-cpu}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM

[[ -n "${DRY_RUN:-}" ]] || mkdir -p "$log_dir"
for ((i = 0; i < num_processes; i++)); do
  args=("${cmd[@]}" pretrain --distributed --coordinator_address "127.0.0.1:${port}"
        --num_processes "$num_processes" --process_id "$i" "$@")
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "${args[@]}"; echo
    continue
  fi
  if ((i == 0)); then
    "${args[@]}" > >(tee "${log_dir}/process_${i}.log") 2>&1 &
  else
    "${args[@]}" > "${log_dir}/process_${i}.log" 2>&1 &
  fi
  pids+=("$!")
done

status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; see ${log_dir}/process_${i}.log" >&2
    status=1
  fi
done
exit "$status"
