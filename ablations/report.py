"""Render an ablation from MLflow into docs/ablations/<NAME>.md and <NAME>.png (same runs, same bytes).

Reads the MLflow store only (run ablations/run.py first). Published numbers come from ablations/published.yaml.

    python ablations/report.py --spec components              # docs/ablations/components.md + .png (quick profile)
    python ablations/report.py --spec projector               # docs/ablations/projector.md + .png
    python ablations/report.py --spec components --profile tiny --out runs/components-tiny.md
    python ablations/report.py --smoke-test                   # the run.py --smoke-test store -> runs/ablation-smoke/
"""

import shlex
import sys
from pathlib import Path

from sellarec.ablation import load_spec, write_report
from sellarec.ablation.tracking import default_tracking_uri
from sellarec.errors import SellarecError
from sellarec.tuning import SearchArgumentParser

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "runs" / "ablation-smoke"

parser = SearchArgumentParser(description=__doc__.splitlines()[0])   # one-line errors, exit 2
parser.add_argument("--spec", help="spec name in ablations/specs (components, projector) or a YAML path")
parser.add_argument("--profile", help="profile the ablation ran on (default: the spec's)")
parser.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///<repo>/mlflow/mlflow.db)")
parser.add_argument("--out", help="Markdown file; the PNG goes beside it (default: docs/ablations/<NAME>.md)")
parser.add_argument("--smoke-test", action="store_true", help="report the run.py --smoke-test store (tiny)")
args = parser.parse_args()
shown = ["python", "ablations/report.py", "--spec", args.spec or "components"]
shown += [a for flag, v in (("--profile", args.profile), ("--tracking-uri", args.tracking_uri)) if v for a in (flag, v)]
if args.smoke_test:
    args.spec, args.profile = args.spec or "components", args.profile or "tiny"
    args.tracking_uri = args.tracking_uri or f"sqlite:///{SMOKE / 'mlflow.db'}"
    args.out = args.out or str(SMOKE / f"{args.spec}.md")
if not args.spec:
    parser.error("--spec is required (or --smoke-test)")
try:
    spec = load_spec(args.spec, ROOT / "ablations" / "specs")
    md, png = write_report(args.tracking_uri or default_tracking_uri(ROOT), spec.name, args.profile or spec.profile,
                           Path(args.out or ROOT / "docs" / "ablations" / f"{spec.name}.md"),
                           ROOT / "ablations" / "published.yaml",
                           shlex.join(shown + ["--smoke-test"] * args.smoke_test))
except SellarecError as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(2)
print(f"wrote {md} and {png}")
