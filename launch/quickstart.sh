#!/usr/bin/env bash
# The README quickstart on one CPU: tiny TiTok on `shapes` -> export -> tokens -> tiny MaskGIT -> samples.
#   bash launch/quickstart.sh [RUN_DIR]   (default runs/quickstart; every stage resumes or is skipped)
set -euo pipefail
RUN_DIR="${1:-runs/quickstart}"
TOKENIZER_EXPORT="$RUN_DIR/tokenizer_export"
GENERATOR_FLAGS=(--config configs/maskgit_tiny.py --config.tokenizer.export_dir="$TOKENIZER_EXPORT"
                 --config.data.data_dir="$RUN_DIR/tokens")

python main.py --config configs/titok_tiny.py --workdir "$RUN_DIR/tokenizer"
if [ ! -d "$TOKENIZER_EXPORT/params" ]; then
  python main.py --config configs/titok_tiny.py --workdir "$RUN_DIR/tokenizer" --mode export \
    --export_dir "$TOKENIZER_EXPORT"
fi
python -m titok_var.tools.pretokenize "${GENERATOR_FLAGS[@]}"
python main.py "${GENERATOR_FLAGS[@]}" --workdir "$RUN_DIR/generator"
python main.py "${GENERATOR_FLAGS[@]}" --workdir "$RUN_DIR/generator" --mode sample
echo "tokenizer reconstructions: $RUN_DIR/tokenizer/eval/; generated samples: $RUN_DIR/generator/samples/"
