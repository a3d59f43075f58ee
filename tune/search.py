"""Hyperparameter search over a SeLLa-Rec search space (Ray Tune + Optuna, tracked in MLflow).

    python tune/search.py --space projector                  # the default sweep (quick profile, ASHA, TPE)
    python tune/search.py --smoke-test                       # tiny profile, 4 trials, about a minute
    python tune/search.py --space lora --sampler gp --scheduler fifo --num-samples 16 --gpus-per-trial 0.25
    python tune/search.py --resume --name projector-20260101-120000      # finish an interrupted sweep
    python tune/search.py --address HEAD:6379 --storage /nfs/sweeps --tracking-uri http://HEAD:5000   # a cluster

The same command as `python -m sellarec search` (options: sellarec/tuning/plan.py). Spaces: tune/spaces/*.yaml.
Results: the terminal table, runs/sweeps/<name>/<name>.md (+ .png; --report-dir docs/sweeps publishes it),
MLflow (mlflow/ui.sh) and the Optuna study runs/sweeps/<name>/optuna.db (optuna-dashboard sqlite:///...).
Bad input: one line, exit code 2.
"""

import sys

from sellarec.cli import script_main

sys.exit(script_main("search", "tune/search.py", __doc__.splitlines()[0]))
