"""`ablations/run.py` and `ablations/report.py` end to end on the tiny profile (2 cells x 2 seeds, `--smoke-test`):
resume skips finished cells, MLflow holds one parent and FINISHED children, and bad input is one line with exit 2.

The smoke runs start Ray twice (about a minute each on a busy 2-core machine), so they are marked ``slow``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
       "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}


def _script(name: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "ablations" / name), *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the smoke ablation with 1 seed, then with 2 (resume), then again (nothing left)."""
    root = tmp_path_factory.mktemp("ablation")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    common = ["--smoke-test", "--storage", root / "ray", "--tracking-uri", uri, "--cache-dir", root / "cache"]
    runs = [_script("run.py", *common, "--seeds", "1"), _script("run.py", *common), _script("run.py", *common)]
    return {"root": root, "uri": uri, "runs": runs}


@pytest.mark.slow
def test_resume_runs_only_unfinished_jobs(smoke: dict) -> None:
    first, second, third = smoke["runs"]
    for result in (first, second, third):
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "2 jobs: 0 already finished, 2 ran, 0 failed" in first.stdout
    assert "4 jobs: 2 already finished, 2 ran, 0 failed" in second.stdout
    assert "4 jobs: 4 already finished, 0 ran, 0 failed" in third.stdout


@pytest.mark.slow
def test_mlflow_holds_one_parent_and_finished_children(smoke: dict) -> None:
    client = MlflowClient(tracking_uri=smoke["uri"])
    exp = client.get_experiment_by_name("ablations").experiment_id
    parents = client.search_runs([exp], "tags.role = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    tags = parents[0].data.tags
    assert (tags["ablation"], tags["profile"]) == ("components", "tiny") and "--smoke-test" in tags["command"]
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert sorted((r.data.tags["cell"], r.data.tags["seed"], r.info.status) for r in children) == [
        ("-warm_token", "0", "FINISHED"), ("-warm_token", "1", "FINISHED"), ("full", "0", "FINISHED"),
        ("full", "1", "FINISHED")]
    for run in children:
        assert 0.0 <= run.data.metrics["test/auc"] <= 1.0 and run.data.metrics["cost/compute_seconds"] > 0
        assert run.data.params["runtime.seed"] == run.data.tags["seed"]
        assert run.data.params["backbone.name"] == "tiny" and run.data.tags["data_fingerprint"]
    by_cell = {(r.data.tags["cell"], r.data.tags["seed"]): r.data.params for r in children}
    assert by_cell["-warm_token", "0"]["stage3.tokens"] == "user,item"
    assert (smoke["root"] / "cache" / "stages" / "stage3").is_dir()


@pytest.mark.slow
def test_report_renders_the_smoke_store(smoke: dict) -> None:
    out = smoke["root"] / "report" / "components.md"
    result = _script("report.py", "--smoke-test", "--tracking-uri", smoke["uri"], "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    markdown = out.read_text(encoding="utf-8")
    rows = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert rows[0].startswith("| `full` | 0,1 | ") and rows[1].startswith("| `-warm_token` | 0,1 | ")
    assert out.with_suffix(".png").is_file() and "Profile: `tiny`" in markdown


@pytest.mark.slow
def test_the_footer_rebuilds_the_table_in_an_empty_store_without_training(smoke: dict) -> None:
    """The footer's fresh-clone commands, pointed at an empty store: every published run is imported, nothing is
    trained, and the report of the new store has the same table."""
    out = smoke["root"] / "report" / "components.md"
    if not out.is_file():
        assert _script("report.py", "--smoke-test", "--tracking-uri", smoke["uri"], "--out", out).returncode == 0
    markdown = out.read_text(encoding="utf-8")
    footer = markdown.split("# from a fresh clone:")[1].splitlines()
    words = footer[1].split()
    assert words[:2] == ["python", "ablations/run.py"] and words[-2] == "--import-runs"
    fresh = f"sqlite:///{smoke['root'] / 'fresh.db'}"
    words[words.index("--tracking-uri") + 1] = fresh
    result = _script("run.py", *words[2:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 jobs: 4 already finished, 0 ran, 0 failed" in result.stdout
    report = footer[2].split()
    assert report[:2] == ["python", "ablations/report.py"] and report[report.index("--tracking-uri") + 1] == smoke["uri"]
    report[report.index("--tracking-uri") + 1] = fresh   # the store the run command above wrote
    again = smoke["root"] / "fresh" / "components.md"
    assert _script("report.py", *report[2:], "--out", again).returncode == 0
    table = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert [line for line in again.read_text(encoding="utf-8").splitlines() if line.startswith("| `")] == table


@pytest.mark.parametrize("args, message", [
    (["--spec", "{bad}"], "ConfigError: ablation spec 'bad': unknown key 'mdoe' (did you mean 'mode'?)"),
    (["--spec", "componets"], "ConfigError: unknown ablation spec 'componets' (did you mean 'components'?"),
    (["--seeds", "x"], "ablations/run.py: error: argument --seeds: invalid int value: 'x'"),
    (["--spec", "components", "--profile", "tiny", "--gpus-per-trial", "1"],
     "ResourceError: --gpus-per-trial=1 but this machine has no CUDA GPU"),
    (["--spec", "components", "--address", "127.0.0.1:6379"],
     "ConfigError: --address needs --tracking-uri of a server every node can reach"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    if "--gpus-per-trial" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mdoe: factorial\ncomponents: {a: {set: {stage3.lr: 0.1}}}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _script("run.py", *[str(bad) if a == "{bad}" else a for a in args], "--tracking-uri", uri,
                     "--storage", tmp_path / "ray")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()     # nothing written


def test_report_without_runs_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = _script("report.py", "--spec", "components", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}",
                     "--out", tmp_path / "x.md")
    assert result.returncode == 2
    assert result.stderr.startswith("DataError: MLflow store sqlite:///") and result.stderr.count("\n") == 1
