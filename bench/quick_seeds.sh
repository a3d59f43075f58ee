#!/usr/bin/env bash
# The quick-profile results of docs/results.md: presets x seeds on the embedded default, then one comparison table.
#   bash bench/quick_seeds.sh [OUT]            (OUT defaults to runs/quick-seeds)
#   SEEDS="0 1 2" PRESETS="sella tallrec-style collm-style mf" JOBS=2 bash bench/quick_seeds.sh
# Runs go through the shared stage cache ($SELLAREC_CACHE), so a rerun, or a preset whose stages another run already
# computed (tallrec-style = sella's stage 1), costs nothing; JOBS seeds run at once, one torch thread each.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/quick-seeds}"
PY="${PY:-.venv/bin/python}"
SEEDS="${SEEDS:-0 1 2}"
PRESETS="${PRESETS:-sella tallrec-style collm-style mf}"
JOBS="${JOBS:-2}"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$OUT"
one_seed() {  # every preset of one seed, in order (sella first: tallrec-style reuses its stage 1)
  local seed=$1 preset start
  for preset in $PRESETS; do
    start=$(date +%s)
    "$PY" -m sellarec train --profile quick --preset "$preset" --set runtime.seed="$seed" \
      --set runtime.progress=false --out "$OUT/$preset-s$seed" > "$OUT/$preset-s$seed.log" 2>&1
    printf '%s-s%s\t%s s\n' "$preset" "$seed" "$(( $(date +%s) - start ))" | tee -a "$OUT/wall.tsv"
  done
}
export -f one_seed
export OUT PY PRESETS
printf '%s\n' $SEEDS | xargs -P "$JOBS" -I{} bash -c 'one_seed {}'
runs=()
for preset in $PRESETS; do for seed in $SEEDS; do runs+=("$OUT/$preset-s$seed"); done; done
"$PY" -m sellarec compare "${runs[@]}" | tee "$OUT/compare.md"
