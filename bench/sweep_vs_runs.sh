#!/usr/bin/env bash
# What the shared stage cache saves: an N-trial `projector` sweep against the same N configurations trained as N
# independent runs, each with its own empty stage cache (what a sweep without the cache would compute).
#
#   bash bench/sweep_vs_runs.sh [OUT] [PROFILE] [N] [PARALLEL]
#   defaults: runs/sweep-vs-runs, quick, 8, the CPU count (the sweep also runs that many trials at once)
#
# Both sides start with no stage cached, share the already converted SmolLM2 (a one-time install step, not a stage)
# and run FIFO (every trial to the end, as an independent run does). Prints both wall times and their ratio and
# writes them to OUT/wall.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/sweep-vs-runs}"
PROFILE="${2:-quick}"
N="${3:-8}"
PARALLEL="${4:-$(nproc)}"
PY="${PY:-.venv/bin/python}"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
rm -rf "$OUT" && mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
BASE="${SELLAREC_CACHE:-$HOME/.cache/sellarec}"
"$PY" - "$BASE" "$PROFILE" <<'EOF'   # convert the backbone once, outside both timings
import sys
from sellarec.config import load_config
from sellarec.models.backbone import load_backbone
cfg = load_config(sys.argv[2])
if cfg.backbone.name != "tiny":   # the tiny backbone trains its tokenizer on the data, in about a second, in each run
    load_backbone(cfg.backbone.name, cache_dir=sys.argv[1], device="cpu", dtype="float32")
EOF
mkdir -p "$BASE/backbones"
fresh_cache() {  # an empty stage cache that sees the converted backbone
  mkdir -p "$1" && ln -s "$BASE/backbones" "$1/backbones"
}

# 1. the sweep: stages 1-2 once for all trials
fresh_cache "$OUT/cache-sweep"
start=$(date +%s.%N)
"$PY" tune/search.py --space projector --profile "$PROFILE" --num-samples "$N" --scheduler fifo \
  --max-concurrent "$PARALLEL" --name sweep-vs-runs --storage "$OUT/sweeps" \
  --tracking-uri "sqlite:///$OUT/mlflow.db" --report-dir "$OUT" --set "runtime.cache_dir=$OUT/cache-sweep" \
  > "$OUT/sweep.log" 2>&1
sweep_s=$(echo "$(date +%s.%N) - $start" | bc)
printf 'sweep of %s trials\t%.0f s\n' "$N" "$sweep_s" | tee "$OUT/wall.tsv"

# 2. the same configurations as independent runs, PARALLEL at a time, each with its own empty cache
"$PY" - "$OUT" "$PROFILE" <<'EOF' > "$OUT/runs.txt"
import json, sys
from pathlib import Path
out, profile = Path(sys.argv[1]), sys.argv[2]
summary = json.loads((out / "sweeps" / "sweep-vs-runs" / "summary.json").read_text())
def shown(value):
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)
for i, row in enumerate(sorted(summary["rows"], key=lambda r: r["index"])):
    print(i, "--profile", profile, *(f"--set {k}={shown(v)}" for k, v in row["params"].items()))
EOF
run_one() {  # index, then train options
  local i=$1; shift
  mkdir -p "$OUT/cache-run-$i" && ln -s "$BASE/backbones" "$OUT/cache-run-$i/backbones"
  "$PY" -m sellarec train "$@" --cache-dir "$OUT/cache-run-$i" --out "$OUT/run-$i" --set runtime.progress=false \
    > "$OUT/run-$i.log" 2>&1
}
export -f run_one && export OUT BASE PY
start=$(date +%s.%N)
xargs -P "$PARALLEL" -L 1 bash -c 'run_one "$@"' _ < "$OUT/runs.txt"
runs_s=$(echo "$(date +%s.%N) - $start" | bc)
printf '%s independent runs\t%.0f s\n' "$N" "$runs_s" | tee -a "$OUT/wall.tsv"
printf 'saving\t%.2fx\n' "$(echo "$runs_s / $sweep_s" | bc -l)" | tee -a "$OUT/wall.tsv"
