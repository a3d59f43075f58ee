#!/usr/bin/env bash
# The prepared GPU check for issue 10's open bar: does the text-only stage 1 (`tallrec-style`) get above chance on
# SmolLM2 with a GPU-sized budget? On the CPU it stays at 0.47-0.52 up to 512 prompts (docs/results.md, probes).
# Here: 8,192 training prompts (64x the quick profile's), a valid pass every 64 steps (the best one kept), TALLRec's
# lr 1e-4 and the quick profile's 5e-4, seeds 0-2, each scored on the quick profile's 1,500 test rows.
#
#   bash bench/gpu_stage1.sh [OUT]          # OUT defaults to runs/gpu-stage1; ~6 runs of a few minutes on an H100
#   PY=/path/to/python bash bench/gpu_stage1.sh   # a Python with this project installed and a CUDA torch
#
# Prints the `compare` table of the six runs (test AUC with its 95 % interval and rows) into OUT/compare.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu-stage1}"
PY="${PY:-.venv/bin/python}"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu_stage1.sh: torch sees no CUDA GPU')"
mkdir -p "$OUT"
runs=()
for lr in 1e-4 5e-4; do
  for seed in 0 1 2; do
    run="$OUT/lr$lr-s$seed"
    "$PY" -m sellarec train --profile quick --preset tallrec-style --set runtime.device=cuda \
      --set runtime.seed="$seed" --set stage1.lr="$lr" --set stage1.max_train_samples=8192 \
      --set stage1.eval_every_steps=64 --set runtime.cache_dir="$OUT/cache" --out "$run"
    runs+=("$run")
  done
done
"$PY" -m sellarec compare "${runs[@]}" | tee "$OUT/compare.md"
