"""The pipeline on CUDA (marker ``gpu``: skipped on machines without it, run by a lent GPU's test command)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sellarec.config import load_config
from sellarec.data.dataset import load_dataset
from sellarec.pipeline import run_pipeline, stage_keys

pytestmark = pytest.mark.gpu


def _cfg(cache: Path, *overrides: str):
    return load_config("tiny", overrides=[f"runtime.cache_dir={cache}", "runtime.progress=false", *overrides])


def test_tiny_pipeline_runs_on_cuda_with_the_cpu_architecture(tmp_path: Path) -> None:
    gpu = run_pipeline(_cfg(tmp_path / "cache", "runtime.device=cuda", "runtime.dtype=bfloat16"), tmp_path / "gpu")
    cpu_cfg = _cfg(tmp_path / "cache", "runtime.device=cpu")
    # bf16 work never shares a key with fp32 work, and the trained stage-3 has the CPU run's parameter count.
    fingerprint = load_dataset(cpu_cfg.data, tmp_path / "cache").fingerprint
    assert all(gpu.metrics["keys"][s] != k for s, k in stage_keys(cpu_cfg, fingerprint).items())
    cpu = run_pipeline(cpu_cfg, tmp_path / "cpu")
    assert gpu.metrics["stage3"]["trainable_params"] == cpu.metrics["stage3"]["trainable_params"]
    for split in ("valid", "test"):
        assert math.isfinite(gpu.metrics["stage3"][split]["auc"])
        assert gpu.metrics["stage3"][split]["rows"] == cpu.metrics["stage3"][split]["rows"]


def test_fp32_on_cuda_shares_keys_with_the_cpu(tmp_path: Path) -> None:
    cuda = stage_keys(_cfg(tmp_path, "runtime.device=cuda", "runtime.dtype=float32"), "fp")
    assert cuda == stage_keys(_cfg(tmp_path, "runtime.device=cpu"), "fp")
