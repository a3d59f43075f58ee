"""Process-level runtime settings: the cache folder and torch threads. The only place that reads the environment."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from sellarec.config import RuntimeConfig

__all__ = ["cache_root", "CACHE_ENV", "seed_everything", "configure_threads", "describe_machine", "repo_root",
           "repo_relative"]

CACHE_ENV = "SELLAREC_CACHE"


def repo_root() -> Path:
    """The source checkout holding the ``sellarec`` package (``tune/``, ``mlflow/``, ``docs/``, ``runs/``)."""
    return Path(__file__).resolve().parents[1]


def repo_relative(text: str) -> str:
    """``text`` with every absolute path under the checkout made relative to it, so that reports and docs hold
    commands that work from any clone (``sqlite:////abs/repo/mlflow/mlflow.db`` -> ``sqlite:///mlflow/mlflow.db``).
    Paths outside the checkout stay as they are."""
    root = str(repo_root())
    return text.replace(root + "/", "").replace(root, ".")


def cache_root(runtime: RuntimeConfig) -> Path:
    """Cache folder: ``runtime.cache_dir``, else ``$SELLAREC_CACHE``, else ``$XDG_CACHE_HOME/sellarec`` (~/.cache)."""
    if runtime.cache_dir:
        return Path(runtime.cache_dir).expanduser().resolve()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (base / "sellarec").resolve()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (each stage calls it with its own derived seed)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_threads(runtime: RuntimeConfig) -> None:
    """Set torch's intra-op threads (1 by default: two threads on two busy cores is 3-40x slower)."""
    import torch

    torch.set_num_threads(runtime.threads)


def describe_machine() -> str:
    """One line naming the CPU, core count, GPU (if torch sees one) and torch build, for benchmarks and run records."""
    import torch

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "no GPU"
    # The kernel set torch dispatches to: a virtual machine's CPU is often just "AMD EPYC", yet AVX2 and AVX512
    # kernels round differently, and LoRA training turns that into other weights (docs/results.md, reproducibility).
    kernels = torch.backends.cpu.get_cpu_capability()
    return (f"{cpu} ({kernels} kernels), {os.cpu_count()} cores, {gpu}, torch {torch.__version__} "
            f"({torch.get_num_threads()} thread(s)), {platform.python_implementation()} {platform.python_version()}")
