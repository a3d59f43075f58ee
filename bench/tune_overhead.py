"""Tune + MLflow overhead per trial against a bare ``run_pipeline`` call, on the tiny profile.

    python bench/tune_overhead.py                 # 4 trials each way, ~3 minutes on 2 idle cores
    python bench/tune_overhead.py --trials 8

Stages 1-2 are computed once first, into a private cache. Then each side runs N stage-3 configurations one after
the other, so the comparison is per trial and not about parallelism. The configurations differ only in stage3.lr,
so each one costs the same. The four timings are:
  bare in-process: run_pipeline() in this process (imports already paid);
  bare process:    `python -m sellarec train` per configuration (imports paid each time);
  sweep fit:       run_sweep(max_concurrent=1, fifo) -> Tuner.fit wall time / N;
  sweep total:     the same, including Ray start/stop, MLflow setup and the report, / N.
The script prints seconds per trial and the ratios to the bare in-process call.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sellarec.config import load_config
from sellarec.pipeline import run_pipeline
from sellarec.tuning.sweep import SweepOptions, run_sweep

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--trials", type=int, default=4, help="configurations per side")
parser.add_argument("--smoke-test", action="store_true", help="2 trials per side")
args = parser.parse_args()
n = 2 if args.smoke_test else args.trials
tmp = Path(tempfile.mkdtemp(prefix="tune-overhead-"))
common = [f"runtime.cache_dir={tmp / 'cache'}", "runtime.progress=false"]
lrs = [1e-3 * (1.5 ** i) for i in range(n)]
run_pipeline(load_config("tiny", overrides=common), tmp / "warmup")            # stages 1-2 into the cache

start = time.perf_counter()
for i, lr in enumerate(lrs):
    run_pipeline(load_config("tiny", overrides=[*common, f"stage3.lr={lr}"]), tmp / f"bare{i}")
bare = (time.perf_counter() - start) / n

start = time.perf_counter()
for i, lr in enumerate(lrs):
    subprocess.run([sys.executable, "-m", "sellarec", "train", "--profile", "tiny", "--out", str(tmp / f"proc{i}"),
                    *[a for o in [*common, f"stage3.lr={lr * 1.01}"] for a in ("--set", o)]], check=True,
                   capture_output=True)
process = (time.perf_counter() - start) / n

space = tmp / "lr.yaml"
space.write_text(f"num_samples: {n}\nsampler: {{kind: random, seed: 1}}\n"
                 "params:\n  stage3.lr: {float: [1.0e-3, 1.0e-2], log: true}\n")
start = time.perf_counter()
out = run_sweep(SweepOptions(space=str(space), profile="tiny", overrides=(common[0],), scheduler="fifo",
                             max_concurrent=1, gpus_per_trial=0.0, name="overhead", storage=str(tmp / "ray"),
                             tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", report_dir=str(tmp / "report")))
total = (time.perf_counter() - start) / n
fit = out.seconds / n

print(f"\nper trial, tiny profile, stages 1-2 cached, {n} trials each, one at a time ({tmp})")
print(f"{'':<28}{'s/trial':>9}{'x bare':>8}")
for name, value in [("bare run_pipeline", bare), ("bare `sellarec train`", process), ("sweep: Tuner.fit", fit),
                    ("sweep: total (Ray+MLflow)", total)]:
    print(f"{name:<28}{value:>9.2f}{value / bare:>8.2f}")
