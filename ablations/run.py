"""Run an ablation spec: cells x seeds as Ray Tune trials through the shared stage cache, logged to MLflow.

Finished cells are skipped, so the same command resumes. Then render the table with ablations/report.py.

    python ablations/run.py --spec components                 # quick profile, 3 seeds: docs/ablations/components.md
    python ablations/run.py --spec projector                  # quick profile, 3 seeds: docs/ablations/projector.md
    python ablations/run.py --spec components --profile tiny --seeds 2 --set stage3.max_train_samples=16
    python ablations/run.py --spec components --gpus-per-trial 0.25 --address auto     # on a Ray cluster with GPUs
    python ablations/run.py --smoke-test                      # tiny, 2 cells x 2 seeds, in runs/ablation-smoke
"""

import shlex
import sys
from pathlib import Path

from sellarec.ablation import Resources, load_spec, run_ablation
from sellarec.ablation.tracking import default_tracking_uri
from sellarec.errors import SellarecError
from sellarec.tuning import SearchArgumentParser

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "runs" / "ablation-smoke"

parser = SearchArgumentParser(description=__doc__.splitlines()[0])   # one-line errors, exit 2
parser.add_argument("--spec", help="spec name in ablations/specs (components, projector) or a YAML path")
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
if args.smoke_test:
    args.spec, args.profile, args.seeds = args.spec or "components", args.profile or "tiny", args.seeds or 2
    args.storage = args.storage or str(SMOKE / "ray")
    args.tracking_uri = args.tracking_uri or f"sqlite:///{SMOKE / 'mlflow.db'}"
if not args.spec:
    parser.error("--spec is required (or --smoke-test)")
try:
    summary = run_ablation(
        load_spec(args.spec, ROOT / "ablations" / "specs"), profile=args.profile, seeds=args.seeds,
        overrides=args.overrides, storage=args.storage or ROOT / "runs" / "ablations",
        tracking_uri=args.tracking_uri or default_tracking_uri(ROOT), cache_dir=args.cache_dir,
        resources=Resources(args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent, args.address),
        max_cells=2 if args.smoke_test else None,
        command=shlex.join(["python", "ablations/run.py", *sys.argv[1:]]))
except SellarecError as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(2)
print(f"{summary.jobs} jobs: {summary.skipped} already finished, {summary.ran} ran, {len(summary.failures)} failed "
      f"(parent run {summary.parent_run_id})")
for job, error in summary.failures:
    print(f"failed: {job}: {error}", file=sys.stderr)
sys.exit(1 if summary.failures or summary.ran + summary.skipped < summary.jobs else 0)
