"""Declarative ablations: specs (YAML) -> cells x seeds -> Ray Tune runs tracked in MLflow -> reports in docs/.

``spec`` and ``expansion`` need neither Ray nor MLflow (a bad spec fails in a second); ``runner`` (Ray, MLflow),
``report`` (MLflow, matplotlib) and the script commands are imported when first used. Resource checks, Ray start-up
and the MLflow store helpers come from the platform's base, shared with sweeps (:mod:`sellarec.experiment`).
"""

from __future__ import annotations

from typing import Any

from sellarec.ablation.expansion import expand_cells, expand_jobs
from sellarec.ablation.spec import AblationSpec, Cell, Job, load_spec
from sellarec.experiment.resources import Resources

__all__ = ["AblationSpec", "Cell", "Job", "load_spec", "expand_cells", "expand_jobs", "run_ablation", "Resources",
           "write_report", "run_command", "report_command"]

_LAZY = {"run_ablation": "sellarec.ablation.runner", "write_report": "sellarec.ablation.report",
         "run_command": "sellarec.ablation.commands", "report_command": "sellarec.ablation.commands"}


def __getattr__(name: str) -> Any:
    """Import the Ray/MLflow-heavy entry points on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sellarec.ablation' has no attribute {name!r}")
