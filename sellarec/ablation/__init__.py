"""Declarative ablations: specs (YAML) -> cells x seeds -> Ray Tune runs tracked in MLflow -> reports in docs/.

``spec`` and ``expansion`` need neither Ray nor MLflow (a bad spec fails in a second); ``runner`` (Ray, MLflow) and
``report`` (MLflow, matplotlib) are imported when first used.
"""

from __future__ import annotations

from typing import Any

from sellarec.ablation.expansion import expand_cells, expand_jobs
from sellarec.ablation.spec import AblationSpec, Cell, Job, load_spec

__all__ = ["AblationSpec", "Cell", "Job", "load_spec", "expand_cells", "expand_jobs", "run_ablation", "Resources",
           "write_report"]

_LAZY = {"run_ablation": "sellarec.ablation.runner", "Resources": "sellarec.ablation.runner",
         "write_report": "sellarec.ablation.report"}


def __getattr__(name: str) -> Any:
    """Import the Ray/MLflow-heavy entry points on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sellarec.ablation' has no attribute {name!r}")
