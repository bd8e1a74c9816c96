#!/usr/bin/env bash
# VAR on one CPU: tiny multi-scale VQVAE on `shapes` -> export -> token maps -> tiny VAR -> samples.
#   bash launch/quickstart_var.sh [RUN_DIR]   (default runs/var_quickstart; every stage resumes or is skipped)
set -euo pipefail
RUN_DIR="${1:-runs/var_quickstart}"
VQVAE_EXPORT="$RUN_DIR/vqvae_export"
VAR_FLAGS=(--config configs/var_tiny.py --config.tokenizer.export_dir="$VQVAE_EXPORT"
           --config.data.data_dir="$RUN_DIR/tokens")

python main.py --config configs/var_vqvae_tiny.py --workdir "$RUN_DIR/vqvae"
if [ ! -d "$VQVAE_EXPORT/params" ]; then
  python main.py --config configs/var_vqvae_tiny.py --workdir "$RUN_DIR/vqvae" --mode export \
    --export_dir "$VQVAE_EXPORT"
fi
python -m titok_var.tools.pretokenize "${VAR_FLAGS[@]}"
python main.py "${VAR_FLAGS[@]}" --workdir "$RUN_DIR/var"
python main.py "${VAR_FLAGS[@]}" --workdir "$RUN_DIR/var" --mode sample
echo "VQVAE reconstructions: $RUN_DIR/vqvae/eval/; VAR samples: $RUN_DIR/var/samples/"
