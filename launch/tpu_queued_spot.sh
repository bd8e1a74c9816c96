#!/usr/bin/env bash
# Spot (preemptible) TPU slice through a queued resource, run until training is complete:
#   QR_NAME=l32-qr TPU_NAME=l32 ZONE=us-central2-b ACCELERATOR=v4-64 RUNTIME=tpu-ubuntu2204-base \
#   CONFIG=configs/titok_l32.py WORKDIR=gs://bucket/runs/l32 REPO_DIR=~/titok_var \
#   SETUP_COMMAND="pip install -e '.[tpu]'" bash launch/tpu_queued_spot.sh [extra main.py flags]
# Each round: (re)create the queued resource when it is missing, suspended or failed (a spot slice
# that was preempted), wait until it is ACTIVE, run SETUP_COMMAND and training on every worker
# (the repository must be in REPO_DIR on the workers' image or a mounted disk), then read the run's
# status from WORKDIR: "complete" deletes the queued resource (KEEP_TPU=1 keeps it) and ends;
# anything else waits BACKOFF_S * round and goes again, at most MAX_RESTARTS times.
set -uo pipefail
: "${QR_NAME:?set QR_NAME (the queued resource)}"
: "${TPU_NAME:?set TPU_NAME (its node id)}"
: "${ZONE:?set ZONE}"
: "${ACCELERATOR:?set ACCELERATOR, e.g. v4-64}"
: "${RUNTIME:?set RUNTIME, the TPU VM image version}"
: "${CONFIG:?set CONFIG to a configs/*.py file}"
: "${WORKDIR:?set WORKDIR (a gs:// path all workers share)}"
SETUP_COMMAND="${SETUP_COMMAND:-true}"
POLL_S="${POLL_S:-30}"
WAIT_ACTIVE_S="${WAIT_ACTIVE_S:-7200}"
source "$(dirname "$0")/tpu_attempt.sh" "$@"

qr_state() {
  gcloud compute tpus queued-resources describe "$QR_NAME" --zone "$ZONE" --format='value(state.state)' 2>/dev/null \
    || echo MISSING
}

for round in $(seq 0 "$MAX_RESTARTS"); do
  if [ "$round" -gt 0 ]; then
    echo "round $round of $MAX_RESTARTS in $((BACKOFF_S * round)) s"
    sleep $((BACKOFF_S * round))
  fi
  state=$(qr_state)
  case "$state" in
    SUSPENDED|FAILED)
      echo "queued resource $QR_NAME is $state: recreating it"
      gcloud compute tpus queued-resources delete "$QR_NAME" --zone "$ZONE" --force --quiet
      state=MISSING ;;
  esac
  if [ "$state" = MISSING ]; then
    gcloud compute tpus queued-resources create "$QR_NAME" --zone "$ZONE" --node-id "$TPU_NAME" \
      --accelerator-type "$ACCELERATOR" --runtime-version "$RUNTIME" --spot || continue
  fi
  waited=0
  while state=$(qr_state); [ "$state" != ACTIVE ]; do
    if [ "$state" = SUSPENDED ] || [ "$state" = FAILED ] || [ "$waited" -ge "$WAIT_ACTIVE_S" ]; then
      echo "queued resource $QR_NAME is $state (waited $waited s): next round" >&2
      continue 2
    fi
    sleep "$POLL_S"
    waited=$((waited + POLL_S))
  done
  run_attempt "$SETUP_COMMAND && "
  case $ATTEMPT_CODE in
    0)
      echo "training complete: $ATTEMPT_STATUS"
      if [ "${KEEP_TPU:-0}" != 1 ]; then
        gcloud compute tpus queued-resources delete "$QR_NAME" --zone "$ZONE" --force --quiet
      fi
      exit 0 ;;
    3) echo "stopped early: $ATTEMPT_STATUS" ;;
    *) echo "the run ended without a status (exit status $ATTEMPT_RC): $ATTEMPT_STATUS" >&2 ;;
  esac
done
echo "not complete after $MAX_RESTARTS restarts" >&2
exit 1
