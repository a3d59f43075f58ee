#!/usr/bin/env bash
# Stage 1 (TALLRec-style LoRA on the text prompts) learning curve on the embedded default: valid AUC against training
# prompts, one run whose valid evaluations every 16 steps (256 prompts) are the curve (metrics.json: stage1.history).
#   bash bench/stage1_curve.sh [OUT] [PROMPTS]     (OUT defaults to runs/stage1-curve, PROMPTS to 1024)
# docs/results.md quotes it. At ~0.9 training prompts/s and ~3.6 scored prompts/s per core, 1,024 prompts cost about
# half an hour on one core.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/stage1-curve}"
PROMPTS="${2:-1024}"
PY="${PY:-.venv/bin/python}"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" -m sellarec train --profile quick --preset tallrec-style --set stage1.max_train_samples="$PROMPTS" \
  --set stage1.eval_every_steps=16 --set runtime.progress=false --out "$OUT"
"$PY" - "$OUT/metrics.json" <<'PY'
import json, sys
stage1 = json.load(open(sys.argv[1]))["stage1"]
print("| optimizer steps | training prompts | train loss | valid AUC |")
print("|---|---|---|---|")
for h in stage1["history"]:
    print(f"| {h['step']} | {h['step'] * 16} | {h.get('train_loss', float('nan')):.3f} | {h.get('valid/auc', float('nan')):.4f} |")
PY
