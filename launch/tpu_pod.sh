#!/usr/bin/env bash
# TPU VM pod slice: the same command on every worker; jax.distributed auto-detects the TPU topology.
#   TPU_NAME=my-v4-64 ZONE=us-central2-b CONFIG=configs/titok_l32.py WORKDIR=gs://bucket/runs/l32 \
#     REPO_DIR=~/titok_var bash launch/tpu_pod.sh [extra main.py flags]
# The repository must already be installed on every worker (`pip install -e '.[tpu]'` in REPO_DIR),
# and here (to read the run's status from WORKDIR).
#
# Runs until training is complete: after a preemption (train_status.json "preempted") or a lost
# connection to the workers (ssh fails, e.g. a maintenance event), it waits BACKOFF_S * attempt
# seconds and runs again, resuming from the newest checkpoint, at most MAX_RESTARTS times.
set -uo pipefail
: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
: "${CONFIG:?set CONFIG to a configs/*.py file}"
: "${WORKDIR:?set WORKDIR (a gs:// path all workers share)}"
source "$(dirname "$0")/tpu_attempt.sh" "$@"

for attempt in $(seq 0 "$MAX_RESTARTS"); do
  if [ "$attempt" -gt 0 ]; then
    echo "restart $attempt of $MAX_RESTARTS in $((BACKOFF_S * attempt)) s"
    sleep $((BACKOFF_S * attempt))
  fi
  run_attempt ""
  case $ATTEMPT_CODE in
    0) echo "training complete: $ATTEMPT_STATUS"; exit 0 ;;
    3) echo "stopped early: $ATTEMPT_STATUS" ;;
    *) echo "the run ended without a status (ssh/training exit status $ATTEMPT_RC): $ATTEMPT_STATUS" >&2 ;;
  esac
done
echo "not complete after $MAX_RESTARTS restarts" >&2
exit 1
