"""Hyperparameter search: Ray Tune trials of the whole pipeline, sampled by Optuna, tracked in MLflow.

Ray, Optuna and MLflow are imported only inside this package (and lazily), so the pipeline and the command line
work without them. Entry point: ``tune/search.py`` (:func:`search`); library use:
:func:`sellarec.tuning.sweep.run_sweep`. ``resources`` (what a trial asks of Ray, starting Ray) and ``tracking``
(MLflow store helpers) load without Ray and serve :mod:`sellarec.ablation` too.
"""

from __future__ import annotations

import argparse

__all__ = ["search"]


def search(args: argparse.Namespace) -> int:
    """Run the sweep described by ``tune/search.py``'s arguments; returns the exit code (0, 2 bad input, 130
    interrupted). Ray and friends are imported here, so ``--help`` and option errors stay instant."""
    from sellarec.tuning.plan import options_from_args
    from sellarec.tuning.sweep import main

    return main(options_from_args(args))
