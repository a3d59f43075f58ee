"""Hyperparameter search over a SeLLa-Rec search space (Ray Tune + Optuna, tracked in MLflow).

    python tune/search.py --space projector                  # the default sweep (quick profile, ASHA, TPE)
    python tune/search.py --smoke-test                       # tiny profile, 4 trials, about a minute
    python tune/search.py --space lora --sampler gp --scheduler fifo --num-samples 16 --gpus-per-trial 0.25
    python tune/search.py --resume --name projector-20260101-120000      # finish an interrupted sweep
    python tune/search.py --address HEAD:6379 --storage /nfs/sweeps --tracking-uri http://HEAD:5000   # a cluster

Spaces: tune/spaces/*.yaml. Results: the terminal table, docs/sweeps/<name>.md (+ .png), MLflow (mlflow/ui.sh) and
the Optuna study runs/sweeps/<name>/optuna.db (optuna-dashboard sqlite:///...). Bad input: one line, exit code 2.
"""

import sys

from sellarec.arguments import ArgumentParser
from sellarec.tuning import search

p = ArgumentParser(prog="tune/search.py", description=__doc__.splitlines()[0])
p.add_argument("--space", default="projector", help="projector, tokens, lora, full, or a YAML path")
p.add_argument("--profile", default=None, help="size profile (default quick; tiny with --smoke-test)")
p.add_argument("--preset", default=None, help="method preset (sella, collm-style, ...)")
p.add_argument("--config", dest="config_file", default=None, metavar="FILE", help="YAML file of config sections")
p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override")
p.add_argument("--num-samples", type=int, default=None, help="trials (default: the space's)")
p.add_argument("--sampler", choices=["tpe", "gp", "random"], default=None, help="default: the space's")
p.add_argument("--scheduler", choices=["asha", "fifo"], default=None,
               help="asha stops weak trials at stage-3 evals (default: the space's, else asha)")
p.add_argument("--metric", default=None, help="valid/auc or valid/uauc (default: the space's)")
p.add_argument("--seed", type=int, default=None, help="sampler seed (default: the space's)")
p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
p.add_argument("--gpus-per-trial", type=float, default=None, help="GPU fraction (default 0.25 with a GPU, else 0)")
p.add_argument("--max-concurrent", type=int, default=None, help="cap on trials running at once")
p.add_argument("--max-failures", type=int, default=1, help="retries of a trial that raised (default 1)")
p.add_argument("--name", default=None, help="sweep name (default <space>-<date>-<time>)")
p.add_argument("--storage", default=None, help="Tune storage path or URI (default runs/sweeps)")
p.add_argument("--tracking-uri", default=None, help="MLflow URI (default sqlite:///<repo>/mlflow/mlflow.db)")
p.add_argument("--address", default=None, help="join this Ray cluster (needs shared --storage, server tracking)")
p.add_argument("--resume", action="store_true", help="finish the interrupted sweep --name")
p.add_argument("--report-dir", default=None, help="folder of <name>.md and .png (default docs/sweeps)")
p.add_argument("--top-k", type=int, default=5, help="rows of the top-k table")
p.add_argument("--smoke-test", action="store_true", help="tiny profile, at most 4 trials")
sys.exit(search(p.parse_args()))
