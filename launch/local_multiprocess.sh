#!/usr/bin/env bash
# N processes on this machine talking over localhost (CPU: gloo collectives). Exercises the
# multi-host code paths (per-host data, global arrays, multi-writer checkpoints) without a cluster.
#   CONFIG=configs/titok_tiny.py WORKDIR=runs/mp NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 \
#     bash launch/local_multiprocess.sh [extra main.py flags]
set -euo pipefail
: "${CONFIG:?set CONFIG to a configs/*.py file}"
: "${WORKDIR:?set WORKDIR to the run directory}"
NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-4}"
PORT="${PORT:-12355}"
export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  python main.py --config "$CONFIG" --workdir "$WORKDIR" --coordinator_address "localhost:$PORT" \
    --num_processes "$NUM_PROCESSES" --process_id "$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
