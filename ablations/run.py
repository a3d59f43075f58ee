"""Run an ablation spec: cells x seeds as Ray Tune trials through the shared stage cache, logged to MLflow.

Finished cells are skipped, so the same command resumes. Then render the table with ablations/report.py.

    python ablations/run.py --spec components                 # quick profile, 3 seeds: docs/ablations/components.md
    python ablations/run.py --spec projector                  # quick profile, 3 seeds: docs/ablations/projector.md
    python ablations/run.py --spec components --profile tiny --seeds 2 --set stage3.max_train_samples=16
    python ablations/run.py --spec components --gpus-per-trial 0.25 --address auto     # on a Ray cluster with GPUs
    python ablations/run.py --smoke-test                      # tiny, 2 cells x 2 seeds, in runs/ablation-smoke

The same command as `python -m sellarec ablate` (options: sellarec/ablation/commands.py).
"""

import sys

from sellarec.cli import script_main

sys.exit(script_main("ablate", "ablations/run.py", __doc__.splitlines()[0]))
