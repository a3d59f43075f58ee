"""Paths shown in reports: absolute paths under the checkout become the relative ones a fresh clone can run."""

from __future__ import annotations

from pathlib import Path

from sellarec.runtime import repo_relative, repo_root


def test_repo_relative_rewrites_only_paths_under_the_checkout() -> None:
    root = Path(__file__).resolve().parents[2]
    assert repo_root() == root
    line = (f"`sqlite:///{root}/mlflow/mlflow.db`; `python tune/search.py --resume --storage {root}/runs/sweeps`; "
            f"cd {root}; /tmp/elsewhere/x.db")
    assert repo_relative(line) == ("`sqlite:///mlflow/mlflow.db`; `python tune/search.py --resume --storage "
                                   "runs/sweeps`; cd .; /tmp/elsewhere/x.db")
