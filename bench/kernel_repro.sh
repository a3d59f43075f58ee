#!/usr/bin/env bash
# Same stage keys, two CPU kernel sets: is a cached stage the same on another machine? Trains stages 1-2 of the
# `quick` sella run of one seed into two fresh stage caches at once, one with torch's default kernels and one capped
# at AVX2 (what an x86 machine without AVX512 runs), then compares the stage-1 adapters, the distilled item table and
# the stage-2 metrics. docs/results.md quotes it ("Reproducibility across machines").
#   bash bench/kernel_repro.sh [SEED] [OUT]        (SEED 1, OUT runs/kernel-repro; about 15 minutes on 2 cores)
# A leg whose cache already holds the stages costs seconds, so a rerun only re-prints the comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED="${1:-1}"
OUT="${2:-runs/kernel-repro}"
PY="${PY:-.venv/bin/python}"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
SHARED="$("$PY" -c 'from sellarec.config import RuntimeConfig; from sellarec.runtime import cache_root; print(cache_root(RuntimeConfig()))')"
leg() {  # leg NAME [ENV=VALUE ...]: stages 1-2 into OUT/NAME/cache (backbone and processed data shared, read only)
  local name=$1; shift
  mkdir -p "$OUT/$name/cache"
  for part in backbones data; do
    [ -e "$SHARED/$part" ] && [ ! -e "$OUT/$name/cache/$part" ] && ln -s "$SHARED/$part" "$OUT/$name/cache/$part"
  done
  rm -rf "$OUT/$name/run"
  env "$@" "$PY" -m sellarec train --profile quick --preset sella --set runtime.seed="$SEED" \
    --set runtime.progress=false --until stage2 --cache-dir "$OUT/$name/cache" --out "$OUT/$name/run" \
    > "$OUT/$name/train.log" 2>&1
}
leg default &
leg avx2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 &
wait
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from safetensors.torch import load_file

out = Path(sys.argv[1])
legs = {name: json.loads((out / name / "run" / "metrics.json").read_text()) for name in ("default", "avx2")}
keys = legs["default"]["keys"]
assert keys == legs["avx2"]["keys"], "the two legs have different stage keys"
entry = {name: {s: out / name / "cache" / "stages" / s / keys[s] for s in ("stage1", "stage2")} for name in legs}
print(f"stage keys (equal in both legs): stage1 {keys['stage1']}, stage2 {keys['stage2']}")
for stage, files in (("stage1", ["adapter.safetensors"]), ("stage2", ["semantic.safetensors", "mf.safetensors"])):
    for file in files:
        a, b = load_file(entry["default"][stage] / file), load_file(entry["avx2"][stage] / file)
        same = sum(bool((a[k] == b[k]).all()) for k in a)
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        scale = max(a[k].abs().max().item() for k in a)
        print(f"{stage}/{file}: {same} of {len(a)} tensors bit-identical; max |difference| {worst:.3g} "
              f"(max |value| {scale:.3g})")
for name, m in legs.items():
    s1, s2 = m["stage1"], m["stage2"]
    print(f"{name}: stage1 valid AUC {s1['valid']['auc']:.4f}; stage2 valid AUC {s2['valid']['auc']:.4f}, "
          f"test AUC {s2['test']['auc']:.4f} [{s2['test'].get('auc_ci_low', float('nan')):.3f}, "
          f"{s2['test'].get('auc_ci_high', float('nan')):.3f}] n={int(s2['test'].get('rows', 0))}")
EOF
