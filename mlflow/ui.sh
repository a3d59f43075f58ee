#!/usr/bin/env bash
# Open the MLflow UI on 127.0.0.1 over the sweeps' default store (mlflow/mlflow.db, artifacts in mlflow/artifacts).
#
#   mlflow/ui.sh                          # http://127.0.0.1:5000
#   PORT=5055 mlflow/ui.sh                # another port
#   mlflow/ui.sh sqlite:////abs/path.db   # another store (what --tracking-uri pointed at)
#
# Prints the links to the latest sweep and ablation first (mlflow/view_link.py): their runs view on model training,
# best valid/auc first, with the varied params and key metrics as columns (a saved view it writes into the store).
# Runs the venv's `mlflow server` with one uvicorn worker and no job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
# spares 8 background processes); bound to loopback only. Ctrl-C stops it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
store="${1:-sqlite:///$here/mlflow.db}"
port="${PORT:-5000}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
echo "MLflow UI on http://127.0.0.1:$port over $store (Ctrl-C to stop)"
"$root/.venv/bin/python" -W ignore "$here/view_link.py" "$store" "http://127.0.0.1:$port" \
  || echo "(no link to the latest sweep: see the error above)"
exec "$root/.venv/bin/mlflow" server --backend-store-uri "$store" --artifacts-destination "$here/artifacts" \
  --host 127.0.0.1 --port "$port" --workers 1
