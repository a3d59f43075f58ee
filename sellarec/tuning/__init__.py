"""Hyperparameter search: Ray Tune trials of the whole pipeline, sampled by Optuna, tracked in MLflow.

Ray, Optuna and MLflow are imported only inside this package (and lazily), so the pipeline and the command line
work without them. Entry points: ``python -m sellarec search`` and ``tune/search.py`` (:func:`search`); library use:
:func:`sellarec.tuning.sweep.run_sweep`. It plans trials (spaces, Optuna, ASHA) and reports them; the trainable,
the MLflow runs and Ray come from :mod:`sellarec.experiment`. It never imports :mod:`sellarec.ablation`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sellarec.tuning.plan import SweepOptions

__all__ = ["search"]


def search(options: SweepOptions) -> int:
    """Run (or resume) the sweep ``options`` describe; returns the exit code (0, 2 bad input, 130 interrupted).
    Ray and friends are imported here, so ``--help`` and option errors stay instant."""
    from sellarec.tuning.sweep import main

    return main(options)
