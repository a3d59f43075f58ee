"""Shared fixtures: offline, one thread, a private cache under tmp_path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch

        torch.set_num_threads(1)  # two threads on two busy cores is 3-40x slower (STACK.md §7)
    except ImportError:
        pass


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A fresh cache root for one test."""
    path = tmp_path / "cache"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache root per test session, so SmolLM2 is converted from its GGUF file once (~20 s) for all slow tests."""
    return tmp_path_factory.mktemp("smollm2-cache")
