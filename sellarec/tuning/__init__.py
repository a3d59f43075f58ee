"""Hyperparameter search: Ray Tune trials of the whole pipeline, sampled by Optuna, tracked in MLflow.

Ray, Optuna and MLflow are imported only inside this package (and lazily), so the pipeline and the command line
work without them. Entry point: ``tune/search.py`` (:func:`search`); library use:
:func:`sellarec.tuning.sweep.run_sweep`.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["SearchArgumentParser", "search"]


class SearchArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2, like ``python -m sellarec``."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message (see --help)`` on one line and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def search(args: argparse.Namespace) -> int:
    """Run the sweep described by ``tune/search.py``'s arguments; returns the exit code (0, 2 bad input, 130
    interrupted). Ray and friends are imported here, so ``--help`` and option errors stay instant."""
    from sellarec.tuning.sweep import main, options_from_args

    return main(options_from_args(args))
