#!/usr/bin/env bash
# Learning-speed probes on the embedded default (quick profile, seed 0), valid evaluations only (`--valid-only`):
#   bash bench/probes.sh NAME [OUT]        (OUT defaults to runs/probes; then python bench/run_diagnostics.py OUT/NAME)
# Probes (docs/results.md quotes them):
#   stage1-answer   TALLRec-style stage 1 with the loss on the answer only, lr 1e-3, 512 prompts, 200 valid rows
#                   every 8 steps (128 prompts)
#   stage3-b8       stage 3 on seed 0's cached stages 1-2, 256 prompts in 32 steps of 8 (the profile: 16 steps of 16),
#                   valid (400 rows) at 128 and 256 prompts
#   stage3-b4       the same in 64 steps of 4
#   stage3-b8-lr1e-2  stage3-b8 at lr 1e-2 (the profile: 3e-3)
set -euo pipefail
cd "$(dirname "$0")/.."
NAME="$1"
OUT="${2:-runs/probes}"
PY="${PY:-.venv/bin/python}"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
case "$NAME" in
  stage1-answer) args=(--preset tallrec-style --set stage1.loss_mask=answer_only --set stage1.lr=1e-3
                       --set stage1.max_train_samples=512 --set stage1.eval_every_steps=8
                       --set eval.max_valid_samples=200) ;;
  stage3-b8) args=(--preset sella --set stage3.max_train_samples=256 --set stage3.grad_accum=1
                   --set stage3.eval_every_steps=16) ;;
  stage3-b4) args=(--preset sella --set stage3.max_train_samples=256 --set stage3.batch_size=4
                   --set stage3.grad_accum=1 --set stage3.eval_every_steps=32) ;;
  stage3-b8-lr1e-2) args=(--preset sella --set stage3.max_train_samples=256 --set stage3.grad_accum=1
                          --set stage3.eval_every_steps=16 --set stage3.lr=1e-2) ;;
  *) echo "bench/probes.sh: unknown probe '$NAME'; use stage1-answer, stage3-b8, stage3-b4 or stage3-b8-lr1e-2" >&2
     exit 2 ;;
esac
mkdir -p "$OUT"
"$PY" -m sellarec train --profile quick "${args[@]}" --set runtime.seed=0 --set runtime.progress=false --valid-only \
  --out "$OUT/$NAME" 2>&1 | tee "$OUT/$NAME.log"
"$PY" bench/run_diagnostics.py "$OUT/$NAME"
