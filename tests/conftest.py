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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run only where CUDA is available (a lent GPU machine); elsewhere they are skipped."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marker gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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


# The tiny stage-3 setup's sizes: MF embedding and projector hidden width.
TINY_EMB, TINY_HIDDEN = 16, 32


@pytest.fixture(scope="module")
def tiny_stage3_parts(tmp_path_factory: pytest.TempPathFactory):
    """40 ML-100K users, the tiny backbone under a frozen LoRA with random non-zero B (as after stage 1, and so that
    anything computed without the adapter would show), an MF model and a random semantic table.

    Returns:
        (dataset, backbone, model, mf, semantic); one instance per test module.
    """
    import torch

    from sellarec.config import DataConfig, LoraConfig
    from sellarec.data import load_dataset
    from sellarec.data.prompts import tiny_corpus
    from sellarec.models.backbone import load_backbone
    from sellarec.models.mf import AlignedMF
    from sellarec.models.lora import attach_lora

    cache = tmp_path_factory.mktemp("cache")
    ds = load_dataset(DataConfig(max_users=40), cache)
    bb = load_backbone("tiny", cache_dir=cache, tiny_corpus=tiny_corpus(ds.titles, ds.item_word))
    model = attach_lora(bb.model, LoraConfig(r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj")),
                        trainable=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    torch.manual_seed(0)
    semantic = torch.randn(ds.num_items, bb.hidden_size)
    mf = AlignedMF(ds.num_users, ds.num_items, TINY_EMB, semantic=semantic, proj_hidden=TINY_HIDDEN)
    return ds, bb, model, mf, semantic
