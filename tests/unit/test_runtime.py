"""Paths shown in reports: absolute paths under the checkout become the relative ones a fresh clone can run; the
machine line names the CPU kernel set, which decides the bits of a trained stage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sellarec.runtime import repo_relative, repo_root


def test_repo_relative_rewrites_only_paths_under_the_checkout() -> None:
    root = Path(__file__).resolve().parents[2]
    assert repo_root() == root
    line = (f"`sqlite:///{root}/mlflow/mlflow.db`; `python tune/search.py --resume --storage {root}/runs/sweeps`; "
            f"cd {root}; /tmp/elsewhere/x.db")
    assert repo_relative(line) == ("`sqlite:///mlflow/mlflow.db`; `python tune/search.py --resume --storage "
                                   "runs/sweeps`; cd .; /tmp/elsewhere/x.db")


def test_machine_line_names_the_kernel_set_torch_dispatches_to() -> None:
    # ATEN_CPU_CAPABILITY caps torch's dispatch (documented by PyTorch); AVX2 exists on every x86 CPU torch supports.
    code = "from sellarec.runtime import describe_machine; print(describe_machine())"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    line = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    if os.uname().machine in ("x86_64", "AMD64"):
        assert "(AVX2 kernels)" in line
    assert "cores" in line and "torch" in line
