#!/usr/bin/env bash
# The quick-profile runs behind docs/results.md and the wall times in docs/performance.md.
#   bash bench/quick_runs.sh [OUT]      (OUT defaults to runs/quick)
# 1. sella from an empty cache (SmolLM2 conversion, data processing and all three stages: the "cold" time);
# 2. sella with a stage-3 change (stages 1-2 from the cache);
# 3. the baselines tallrec-style, collm-style and mf through the same cache.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/quick}"
CACHE="$OUT/cache"
PY="${PY:-.venv/bin/python}"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
rm -rf "$CACHE"
mkdir -p "$OUT"
run() {  # name, then train options
  local name=$1; shift
  local start=$(date +%s.%N)
  "$PY" -m sellarec train --profile quick --cache-dir "$CACHE" --out "$OUT/$name" --set runtime.progress=false "$@" \
    > "$OUT/$name.log" 2>&1
  printf '%s\t%.1f s\n' "$name" "$(echo "$(date +%s.%N) - $start" | bc)" | tee -a "$OUT/wall.tsv"
}
: > "$OUT/wall.tsv"
run sella-cold --preset sella
run sella-stage3-only --preset sella --set stage3.lr=5e-4
run tallrec-style --preset tallrec-style
run collm-style --preset collm-style
run mf --preset mf
"$PY" -m sellarec compare "$OUT"/sella-cold "$OUT"/tallrec-style "$OUT"/collm-style "$OUT"/mf
