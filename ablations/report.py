"""Render an ablation from MLflow into docs/ablations/<NAME>.md and <NAME>.png (same runs, same bytes).

Reads the MLflow store only (run ablations/run.py first). Published numbers come from ablations/published.yaml.

    python ablations/report.py --spec components              # docs/ablations/components.md + .png (quick profile)
    python ablations/report.py --spec projector               # docs/ablations/projector.md + .png
    python ablations/report.py --spec components --profile tiny --out runs/components-tiny.md
    python ablations/report.py --smoke-test                   # the run.py --smoke-test store -> runs/ablation-smoke/
"""

import sys

from sellarec.ablation import report_command
from sellarec.arguments import ArgumentParser

parser = ArgumentParser(description=__doc__.splitlines()[0])   # one-line errors, exit 2
parser.add_argument("--spec", help="spec name in ablations/specs (components, projector, methods) or a YAML path")
parser.add_argument("--profile", help="profile the ablation ran on (default: the spec's)")
parser.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///<repo>/mlflow/mlflow.db)")
parser.add_argument("--out", help="Markdown file; the PNG goes beside it (default: docs/ablations/<NAME>.md)")
parser.add_argument("--smoke-test", action="store_true", help="report the run.py --smoke-test store (tiny)")
args = parser.parse_args()
if not (args.spec or args.smoke_test):
    parser.error("--spec is required (or --smoke-test)")
sys.exit(report_command(args))
