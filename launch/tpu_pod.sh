#!/usr/bin/env bash
# TPU VM pod slice: the same command on every worker; jax.distributed auto-detects the TPU topology.
#   TPU_NAME=my-v4-64 ZONE=us-central2-b CONFIG=configs/titok_l32.py WORKDIR=gs://bucket/runs/l32 \
#     REPO_DIR=~/titok_var bash launch/tpu_pod.sh [extra main.py flags]
# The repository must already be installed on every worker (`pip install -e '.[tpu]'` in REPO_DIR).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
: "${CONFIG:?set CONFIG to a configs/*.py file}"
: "${WORKDIR:?set WORKDIR (a gs:// path all workers share)}"
REPO_DIR="${REPO_DIR:-~/titok_var}"
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd $REPO_DIR && python main.py --config $CONFIG --workdir $WORKDIR --distributed$extra"
