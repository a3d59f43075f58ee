"""Run an ablation spec: cells x seeds as Ray Tune trials through the shared stage cache, logged to MLflow.

Finished cells are skipped, so the same command resumes. Then render the table with ablations/report.py.

    python ablations/run.py --spec components                 # quick profile, 3 seeds: docs/ablations/components.md
    python ablations/run.py --spec projector                  # quick profile, 3 seeds: docs/ablations/projector.md
    python ablations/run.py --spec components --profile tiny --seeds 2 --set stage3.max_train_samples=16
    python ablations/run.py --spec components --gpus-per-trial 0.25 --address auto     # on a Ray cluster with GPUs
    python ablations/run.py --smoke-test                      # tiny, 2 cells x 2 seeds, in runs/ablation-smoke
"""

import sys

from sellarec.ablation import run_command
from sellarec.arguments import ArgumentParser

parser = ArgumentParser(description=__doc__.splitlines()[0])   # one-line errors, exit 2
parser.add_argument("--spec", help="spec name in ablations/specs (components, projector, methods) or a YAML path")
parser.add_argument("--profile", help="size profile of every row (default: the spec's)")
parser.add_argument("--seeds", type=int, help="number of seeds 0..K-1 (default: the spec's)")
parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override for every row, repeatable")
parser.add_argument("--storage", help="Ray Tune storage path or URI (default: runs/ablations)")
parser.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///<repo>/mlflow/mlflow.db)")
parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
parser.add_argument("--gpus-per-trial", type=float, help="GPU fraction (default 0.25 with a GPU, else 0)")
parser.add_argument("--max-concurrent", type=int, help="cap on trials running at once")
parser.add_argument("--cache-dir", help="shared stage cache (default: $SELLAREC_CACHE or ~/.cache/sellarec)")
parser.add_argument("--smoke-test", action="store_true", help="tiny profile, 2 cells x 2 seeds, private store")
args = parser.parse_args()
if not (args.spec or args.smoke_test):
    parser.error("--spec is required (or --smoke-test)")
sys.exit(run_command(args, sys.argv[1:]))
