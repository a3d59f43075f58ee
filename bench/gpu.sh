#!/usr/bin/env bash
# The one prepared GPU check (run it whenever a GPU is lent; record the figures with the card's name):
#   1. the quick profile (ML-100K + SmolLM2) end to end in bfloat16 from an empty cache: wall time, peak memory, AUC;
#   2. a 4-trial `projector` sweep at 0.25 GPU per trial (four trials share the card; stages 1-2 come from step 1's
#      cache): trials/hour, peak memory per trial, AUC.
#
#   bash bench/gpu.sh [OUT]            # OUT defaults to runs/bench-gpu; about 3 minutes on an H100 (docs/performance.md)
#   PY=/path/to/python bash bench/gpu.sh   # a Python with this project installed and a CUDA torch
#
# Needs CUDA torch: `make install` pins the CPU wheel of this project's machines. On a GPU host, install
# torch==2.13.0 from the CUDA index first. Prints a table and writes it to OUT/gpu.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/bench-gpu}"
PY="${PY:-.venv/bin/python}"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
rm -rf "$OUT" && mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"   # absolute from here on (relative or not)
CACHE="$OUT/cache"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: torch sees no CUDA GPU')"
CARD="$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"
echo "card: $CARD"

# 0. the tests marked gpu (skipped on CPU machines): the pipeline on CUDA, keys by dtype
"$PY" -m pytest -q -m gpu tests > "$OUT/gpu-tests.log" 2>&1 || echo "bench/gpu.sh: gpu tests failed"
tail -3 "$OUT/gpu-tests.log"   # a failure is reported, not fatal: the benchmarks below still run on the lent time

# 1. one quick-profile run in bf16 (cold cache), peak memory from torch's allocator
"$PY" - "$OUT" "$CACHE" <<'EOF'
import json, sys, time
from pathlib import Path
import torch
from sellarec.config import load_config
from sellarec.pipeline import run_pipeline
out, cache = Path(sys.argv[1]), sys.argv[2]
cfg = load_config("quick", overrides=["runtime.dtype=bfloat16", "runtime.device=cuda", f"runtime.cache_dir={cache}",
                                      "runtime.progress=false"])
start = time.perf_counter()
metrics = run_pipeline(cfg, out / "quick-bf16").metrics
seconds = time.perf_counter() - start
s3 = metrics["stage3"]
row = {"seconds": seconds, "peak_mib": torch.cuda.max_memory_allocated() / 2**20, "valid_auc": s3["valid"]["auc"],
       "test_auc": s3["test"]["auc"], "test_uauc": s3["test"]["uauc"]}
(out / "quick.json").write_text(json.dumps(row))
print("quick bf16:", row)
EOF

# 2. 4 trials at 0.25 GPU each, all at once (FIFO: every trial runs to the end)
"$PY" tune/search.py --space projector --profile quick --num-samples 4 --scheduler fifo \
  --gpus-per-trial 0.25 --cpus-per-trial 2 --set runtime.dtype=bfloat16 --set "runtime.cache_dir=$CACHE" \
  --name gpu-bench --storage "$OUT/sweeps" --tracking-uri "sqlite:///$OUT/mlflow.db" \
  --report-dir "$OUT" | tee "$OUT/sweep.log"

# 3. the table
"$PY" - "$OUT" "$CARD" <<'EOF'
import json, sys
from pathlib import Path
out, card = Path(sys.argv[1]), sys.argv[2]
quick = json.loads((out / "quick.json").read_text())
sweep = json.loads((out / "sweeps" / "gpu-bench" / "summary.json").read_text())
rows = [r for r in sweep["rows"] if r["status"] == "finished"]
lines = [f"card\t{card}",
         f"quick bf16 (cold cache)\t{quick['seconds']:.0f} s\tpeak {quick['peak_mib']:.0f} MiB\t"
         f"valid AUC {quick['valid_auc']:.4f}\ttest AUC {quick['test_auc']:.4f}\ttest UAUC {quick['test_uauc']:.4f}",
         f"sweep: 4 trials at 0.25 GPU\t{len(rows)} finished in {sweep['seconds']:.0f} s\t"
         f"{3600 * len(rows) / sweep['seconds']:.1f} trials/hour"]
for r in rows:
    m = r["metrics"]
    lines.append(f"  trial {r['trial_id']}\tpeak {m.get('cost/peak_gpu_mib', float('nan')):.0f} MiB\t"
                 f"{m['cost/trial_seconds']:.0f} s\tvalid AUC {m['valid/auc']:.4f}")   # sweeps score valid only
text = "\n".join(lines)
(out / "gpu.tsv").write_text(text + "\n")
print("\n" + text)
EOF
