"""Render an ablation from MLflow into docs/ablations/<NAME>.md and <NAME>.png (same runs, same bytes).

Reads the MLflow store only (run ablations/run.py first). Published numbers come from ablations/published.yaml.

    python ablations/report.py --spec components              # docs/ablations/components.md + .png (quick profile)
    python ablations/report.py --spec projector               # docs/ablations/projector.md + .png
    python ablations/report.py --spec components --profile tiny --out runs/components-tiny.md
    python ablations/report.py --smoke-test                   # the run.py --smoke-test store -> runs/ablation-smoke/

The same command as `python -m sellarec report` (options: sellarec/ablation/commands.py).
"""

import sys

from sellarec.cli import script_main

sys.exit(script_main("report", "ablations/report.py", __doc__.splitlines()[0]))
