"""`python -m sellarec train` end to end on the tiny profile: metrics.json contract, resume, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sellarec.config import load_config
from sellarec.pipeline import run_pipeline


def _cfg(cache: Path, *overrides: str):
    return load_config("tiny", overrides=[f"runtime.cache_dir={cache}", "runtime.progress=false", *overrides])


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("run")
    cfg = _cfg(root / "cache")
    return cfg, root, run_pipeline(cfg, root / "out")


def test_metrics_json_contract(first_run) -> None:
    _, root, result = first_run
    metrics = json.loads((root / "out" / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    for stage in ("stage1", "stage2"):
        for split in ("valid", "test"):
            for name in ("auc", "uauc"):
                assert 0.0 <= metrics[stage][split][name] <= 1.0
    align = metrics["stage2"]["align"]
    assert align["after"] > align["before"]                               # the alignment loss did its job
    for stage in ("stage1", "stage2"):
        meta = json.loads((root / "out" / stage / "meta.json").read_text())
        assert meta["stage"] == stage and meta["versions"]["torch"]
    assert (root / "out" / "stage1" / "adapter.safetensors").stat().st_size < 200_000   # adapter only, no embeddings


def test_identical_rerun_reuses_every_stage(first_run) -> None:
    cfg, root, result = first_run
    again = run_pipeline(cfg, root / "out")
    assert again.reused == ["stage1", "stage2"]
    assert again.metrics == json.loads(json.dumps(result.metrics))


def test_changing_stage2_reruns_only_stage2(first_run) -> None:
    _, root, _ = first_run
    changed = run_pipeline(_cfg(root / "cache", "stage2.align=none"), root / "out")
    assert changed.reused == ["stage1"]
    assert changed.metrics["stage2"]["align"] is None


def test_mf_baseline_preset_has_no_alignment(tmp_path: Path) -> None:
    result = run_pipeline(_cfg(tmp_path / "cache", "stage2.align=none"), tmp_path / "out")
    assert result.metrics["stage2"]["align"] is None


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SELLAREC_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "sellarec", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_train_prints_a_table_and_writes_metrics(tmp_path: Path) -> None:
    result = _cli("train", "--profile", "tiny", "--until", "stage1", "--out", str(tmp_path / "out"),
                  "--set", "runtime.progress=false", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stage1 (LLM, TALLRec-style)" in result.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics) == {"stage1"}


@pytest.mark.parametrize("args, message", [
    (["train", "--until", "stage9"], "invalid choice: 'stage9'"),
    (["train", "--profile", "tiny", "--set", "stage1.lora.r=0"], "stage1.lora.r=0 must be >= 1"),
    (["train", "--profile", "tiny", "--set", "backbone.name=/no/such/model"], "/no/such/model"),
])
def test_cli_train_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = _cli(*args, "--out", str(tmp_path / "out"), cache=tmp_path / "cache")
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out" / "stage1").exists()
