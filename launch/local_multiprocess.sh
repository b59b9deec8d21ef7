#!/usr/bin/env bash
# Runs one t2ijax command as N processes on this machine, joined by
# jax.distributed over localhost: a multi-host run without the hosts. On CPU each
# process gets its own fake devices, so N processes x D devices form one global
# mesh of N*D devices (what tests/test_multihost.py checks against one process).
#
# Usage:
#   launch/local_multiprocess.sh [t2ijax.main flags...]
#
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 launch/local_multiprocess.sh \
#       --config=configs/dmgan.py:demo --workdir=runs/dmgan_mp \
#       --config.train.batch_size=16 --config.mesh.shape='(-1,1)'
#
# Environment (defaults in brackets):
#   NUM_PROCESSES        processes to start [2]
#   DEVICES_PER_PROCESS  fake CPU devices per process; 0 keeps jax's default [4]
#   PORT                 coordinator port on localhost [a free one]
#   PYTHON               the interpreter [python3]
#   LOG_DIR              where process_<i>.log of processes 1.. go [a new
#                        temporary folder]; process 0 prints to this terminal
#
# The config overrides that matter: --config.train.batch_size is the global
# batch (divisible by the 'data' mesh axis and by NUM_PROCESSES),
# --config.mesh.shape the mesh over all NUM_PROCESSES*DEVICES_PER_PROCESS
# devices ('data' first), --workdir one folder all processes share.
# The exit status is 0 only if every process succeeded; when one fails, the
# others are stopped rather than left waiting for it.
set -euo pipefail

NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-4}"
PYTHON="${PYTHON:-python3}"
LOG_DIR="${LOG_DIR:-$(mktemp -d -t t2ijax_mp.XXXXXX)}"

if [[ $# -eq 0 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,28p' "$0"
  exit 0
fi
if ! [[ "${NUM_PROCESSES}" =~ ^[1-9][0-9]*$ ]]; then
  echo "NUM_PROCESSES=${NUM_PROCESSES} is not a positive integer" >&2
  exit 2
fi
if ! [[ "${DEVICES_PER_PROCESS}" =~ ^[0-9]+$ ]]; then
  echo "DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS} is not a non-negative integer" >&2
  exit 2
fi
if [[ -z "${PORT:-}" ]]; then
  PORT="$("${PYTHON}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
mkdir -p "${LOG_DIR}"

device_flags=()
if [[ "${DEVICES_PER_PROCESS}" -gt 0 ]]; then
  device_flags=("--num_cpu_devices=${DEVICES_PER_PROCESS}")
fi

pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    kill "${pid}" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM

echo "starting ${NUM_PROCESSES} processes (coordinator 127.0.0.1:${PORT}, logs in ${LOG_DIR})" >&2
for ((i = 0; i < NUM_PROCESSES; i++)); do
  cmd=("${PYTHON}" -m t2ijax.main
       "--coordinator_address=127.0.0.1:${PORT}"
       "--num_processes=${NUM_PROCESSES}" "--process_id=${i}"
       "${device_flags[@]}" "$@")
  if [[ "${i}" -eq 0 ]]; then
    "${cmd[@]}" &
  else
    "${cmd[@]}" > "${LOG_DIR}/process_${i}.log" 2>&1 &
  fi
  pids+=("$!")
done

status=0
for ((n = 0; n < NUM_PROCESSES; n++)); do
  if ! wait -n; then
    if [[ "${status}" -eq 0 ]]; then
      status=1
      echo "a process failed; stopping the others (logs in ${LOG_DIR})" >&2
      stop_all
    fi
  fi
done
trap - INT TERM
if [[ "${status}" -ne 0 ]]; then
  for ((i = 1; i < NUM_PROCESSES; i++)); do
    echo "---- tail of process_${i}.log ----" >&2
    tail -n 20 "${LOG_DIR}/process_${i}.log" >&2 || true
  done
fi
exit "${status}"
