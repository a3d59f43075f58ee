#!/usr/bin/env bash
# Does a refactor change what a sweep does? The same tiny sweep (space projector, 4 random-sampler trials, FIFO, one
# at a time) at two commits, each in an empty stage cache and MLflow store, then: the same trials (drawn params)
# with the same status and bit-identical valid/* metrics, and the metric names each commit logs.
#   bash bench/sweep_equivalence.sh BEFORE [AFTER] [OUT]     (AFTER defaults to HEAD, OUT to runs/sweep-equivalence)
# Each side takes ~2-3 min on the 2-core CPU (stages 1-2 of tiny dominate); the venv is this checkout's.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE="$1"; AFTER="${2:-HEAD}"; OUT="$(realpath -m "${3:-runs/sweep-equivalence}")"
PY="$(realpath -s "${PY:-.venv/bin/python}")"   # -s: a venv's python is a symlink that must stay one
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled \
  MLFLOW_DISABLE_TELEMETRY=true
rm -rf "$OUT"; mkdir -p "$OUT"
cleanup() { git worktree remove --force "$OUT/before-tree" 2>/dev/null || true
           git worktree remove --force "$OUT/after-tree" 2>/dev/null || true; }
trap cleanup EXIT
for side in before after; do
  rev=$([ "$side" = before ] && echo "$BEFORE" || echo "$AFTER")
  git worktree add -q --detach "$OUT/$side-tree" "$rev"
  (cd "$OUT/$side-tree" && PYTHONPATH="$OUT/$side-tree" "$PY" tune/search.py --space projector --profile tiny \
    --num-samples 4 --sampler random --seed 3 --scheduler fifo --max-concurrent 1 --name eq \
    --storage "$OUT/$side/sweeps" --tracking-uri "sqlite:///$OUT/$side/mlflow.db" --report-dir "$OUT/$side" \
    --set "runtime.cache_dir=$OUT/$side/cache" > "$OUT/$side.log" 2>&1)
  git worktree remove --force "$OUT/$side-tree"
  echo "$side ($(git rev-parse --short "$rev")): done, log $OUT/$side.log"
done
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def rows(side):
    summary = json.loads((out / side / "sweeps" / "eq" / "summary.json").read_text())
    return {json.dumps(r["params"], sort_keys=True): (r["status"], r["metrics"]) for r in summary["rows"]}
before, after = rows("before"), rows("after")
same = [k for k in before if k in after and before[k][0] == after[k][0]
        and all(after[k][1].get(m) == v for m, v in before[k][1].items() if m.startswith("valid/"))]
print(f"trials: {len(before)} before, {len(after)} after, same drawn params: {set(before) == set(after)}")
print(f"{len(same)}/{len(before)} trials with the same status and every valid/* metric of before bit-identical after")
names = lambda rs: sorted({m for _, (_, metrics) in rs.items() for m in metrics})
print("metric names only before:", sorted(set(names(before)) - set(names(after))))
print("metric names only after: ", sorted(set(names(after)) - set(names(before))))
sys.exit(0 if len(same) == len(before) == len(after) else 1)
PY
