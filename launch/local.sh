#!/usr/bin/env bash
# Single process on this machine (all local GPUs/TPU cores or the CPU).
#   CONFIG=configs/titok_l32.py WORKDIR=/data/runs/l32 bash launch/local.sh [extra flags]
set -euo pipefail
: "${CONFIG:?set CONFIG to a configs/*.py file}"
: "${WORKDIR:?set WORKDIR to the run directory}"
exec python main.py --config "$CONFIG" --workdir "$WORKDIR" "$@"
