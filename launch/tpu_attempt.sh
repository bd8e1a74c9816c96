# Sourced by the TPU launchers (tpu_pod.sh, tpu_queued_spot.sh): their shared settings and one
# training attempt on every worker. `source launch/tpu_attempt.sh "$@"` passes the extra main.py flags.
REPO_DIR="${REPO_DIR:-~/titok_var}"
MAX_RESTARTS="${MAX_RESTARTS:-20}"
BACKOFF_S="${BACKOFF_S:-60}"
PYTHON="${PYTHON:-python}"
extra=""
if [ "$#" -gt 0 ]; then extra=$(printf ' %q' "$@"); fi

# run_attempt PREFIX: clears the run's status, runs "cd REPO_DIR && PREFIX python main.py ..." on all
# workers, then sets ATTEMPT_STATUS (the status line) and ATTEMPT_CODE (run_status's exit status:
# 0 complete, 3 preempted, 4 none). A failed run (status 5) ends the script: a restart would fail again.
run_attempt() {
  "$PYTHON" -m titok_var.tools.run_status --clear "$WORKDIR" > /dev/null  # this attempt's status only
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
    "cd $REPO_DIR && $1python main.py --config $CONFIG --workdir $WORKDIR --distributed$extra"
  ATTEMPT_RC=$?
  ATTEMPT_STATUS=$("$PYTHON" -m titok_var.tools.run_status "$WORKDIR")
  ATTEMPT_CODE=$?
  if [ "$ATTEMPT_CODE" -eq 5 ]; then
    echo "training failed: $ATTEMPT_STATUS (exit status $ATTEMPT_RC); not restarted" >&2
    exit 1
  fi
}
