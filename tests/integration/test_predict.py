"""`python -m sellarec predict` and `export` on tiny runs: agreement with the evaluation, bundles, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from sellarec.cli import main
from sellarec.config import load_config
from sellarec.data.batches import sample_rows
from sellarec.pipeline import restore_final_model, run_pipeline
from sellarec.predict import pair_rows
from sellarec.run_artifacts import artifacts_from_run


def _cfg(cache: Path, *overrides: str):
    return load_config("tiny", overrides=[f"runtime.cache_dir={cache}", "runtime.progress=false", *overrides])


def _test_rows(cfg, ds) -> pd.DataFrame:
    """The rows the run's test evaluation scored (pipeline: ``sample_rows`` of test with seed + 1)."""
    return sample_rows(ds.split("test"), cfg.eval.max_test_samples, cfg.runtime.seed + 1)


def _raw_pairs(arts, rows: pd.DataFrame) -> pd.DataFrame:
    users = {v: k for k, v in arts.ids.users.items()}
    items = {v: k for k, v in arts.ids.items.items()}
    return pd.DataFrame({"user_id": rows["user"].map(users), "item_id": rows["item"].map(items)})


def _predict(*args: str) -> int:
    return main(["predict", *args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """One tiny stage-3 run (private cache), its artifacts, and its test rows written as a raw-id pairs csv."""
    root = tmp_path_factory.mktemp("predict")
    run_pipeline(_cfg(root / "cache"), root / "run")
    arts = artifacts_from_run(root / "run")
    rows = _test_rows(arts.cfg, arts.ds)
    _raw_pairs(arts, rows).to_csv(root / "pairs.csv", index=False)
    return root, arts, rows


@pytest.fixture(scope="module")
def run_scores(trained) -> pd.DataFrame:
    root, _, _ = trained
    assert _predict("--run", str(root / "run"), "--pairs", str(root / "pairs.csv"), "--out",
                    str(root / "scores.csv")) == 0
    return pd.read_csv(root / "scores.csv", dtype={"user_id": str, "item_id": str})


def test_raw_ids_name_the_items_the_source_file_names() -> None:
    # Independent of the protocol: recbole's ml-100k.item file maps raw item ids to titles.
    from sellarec.data.readers import source_files
    from sellarec.run_artifacts import raw_ids
    from sellarec.data.dataset import load_dataset

    cfg = _cfg(Path("unused"))
    ds = load_dataset(cfg.data, None)
    ids = raw_ids(cfg.data, ds)
    items = pd.read_csv(source_files(cfg.data)[1], sep="\t", dtype=str, keep_default_na=False)
    titles = dict(zip(items["item_id:token"], items["movie_title:token_seq"]))
    assert len(ids.items) == ds.num_items - 1 and len(ids.users) == ds.num_users - 1
    for raw, internal in list(ids.items.items())[:50]:
        assert ds.titles[internal].startswith(" ".join(titles[raw].split())), (raw, internal)


def test_predict_agrees_with_the_test_evaluation(trained, run_scores) -> None:
    root, arts, rows = trained
    assert list(run_scores.columns) == ["user_id", "item_id", "score", "model", "cold"]
    assert (run_scores["model"] == "stage3").all() and len(run_scores) == len(rows)
    # per row: the stage's own scoring of the dataset's test rows (their stored histories), model rebuilt alone
    from sellarec.stages import stage3

    cfg = arts.cfg
    model = restore_final_model(cfg, arts.ds, arts.folders, root / "cache")
    expected = stage3.score_rows(cfg.stage3, cfg.eval, arts.ds, model.backbone, model.model, model.injector, rows,
                                 max_length=cfg.backbone.max_length)
    np.testing.assert_allclose(run_scores["score"].to_numpy(), expected, atol=1e-5)
    # the run's own number, computed at training time by the model trained in that process
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    auc = roc_auc_score(rows["label"].to_numpy(), run_scores["score"].to_numpy())
    assert auc == pytest.approx(metrics["stage3"]["test"]["auc"], abs=1e-6)
    assert run_scores["cold"].tolist() == rows["cold"].astype(int).tolist()   # the protocol's cold flag


def test_a_pair_the_data_lacks_is_prompted_with_all_the_users_positives(trained) -> None:
    _, arts, _ = trained
    inter = arts.ds.interactions
    user = int(inter.loc[inter["label"] == 1, "user"].value_counts().index[0])
    item = int(next(i for i in range(1, arts.ds.num_items) if i not in set(inter.loc[inter["user"] == user, "item"])))
    rows = pair_rows(arts.ds, np.array([user]), np.array([item]))
    positives = inter.loc[(inter["user"] == user) & (inter["label"] == 1), "item"].tolist()
    assert rows["history"][0] == positives[-arts.cfg.data.history_len:]


def test_an_exported_bundle_predicts_without_the_stage_cache(trained, run_scores, tmp_path: Path) -> None:
    root, _, _ = trained
    assert main(["export", "--run", str(root / "run"), "--to", str(tmp_path / "bundle")]) == 0
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["backbone"] == "tiny" and set(manifest["stages"]) == {"stage1", "stage2", "stage3"}
    assert {"sellarec", "torch", "transformers", "peft"} <= set(manifest["versions"])
    assert "predict --bundle" in (tmp_path / "bundle" / "README.md").read_text()
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    shutil.move(tmp_path / "bundle", moved)
    (root / "cache").rename(root / "cache-away")
    try:
        assert _predict("--bundle", str(moved), "--pairs", str(root / "pairs.csv"), "--out",
                        str(tmp_path / "again.csv"), "--cache-dir", str(tmp_path / "fresh")) == 0
    finally:
        (root / "cache-away").rename(root / "cache")
    again = pd.read_csv(tmp_path / "again.csv", dtype={"user_id": str, "item_id": str})
    pd.testing.assert_frame_equal(again, run_scores)
    assert not (tmp_path / "fresh" / "stages").exists()


def test_a_bundle_with_an_altered_data_fingerprint_is_refused(trained, tmp_path: Path) -> None:
    root, _, _ = trained
    bundle = tmp_path / "bundle"
    assert main(["export", "--run", str(root / "run"), "--to", str(bundle)]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["data_fingerprint"] = "0123456789abcdef"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run([sys.executable, "-m", "sellarec", "predict", "--bundle", str(bundle), "--pairs",
                           str(root / "pairs.csv"), "--out", str(tmp_path / "s.csv")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "SELLAREC_CACHE": str(tmp_path / "c")})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("DataError:") and "0123456789abcdef" in done.stderr
    assert not (tmp_path / "s.csv").exists()


def test_a_bundle_trained_on_other_data_than_the_local_copy_is_refused(trained, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    # A consistent bundle (manifest and every stage agree) whose data is not the local ml100k sample.
    root, arts, _ = trained
    bundle = tmp_path / "bundle"
    assert main(["export", "--run", str(root / "run"), "--to", str(bundle)]) == 0
    for meta_path in [bundle / "manifest.json", *bundle.glob("stages/*/meta.json")]:
        meta = json.loads(meta_path.read_text())
        meta["data_fingerprint" if meta_path.name == "manifest.json" else "data"] = "0123456789abcdef"
        meta_path.write_text(json.dumps(meta))
    code = _predict("--bundle", str(bundle), "--pairs", str(root / "pairs.csv"), "--out", str(tmp_path / "s.csv"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"the local data has {arts.ds.fingerprint}" in err and "0123456789abcdef" in err


def test_other_library_versions_give_one_warning_line(trained, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    root, _, _ = trained
    bundle = tmp_path / "bundle"
    assert main(["export", "--run", str(root / "run"), "--to", str(bundle)]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["versions"]["transformers"] = "0.0.1"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert _predict("--bundle", str(bundle), "--pairs", str(root / "pairs.csv"), "--out", str(tmp_path / "s.csv"),
                    "--cache-dir", str(tmp_path / "c")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "transformers 0.0.1 -> " in warnings[0]


def test_export_refuses_an_existing_folder(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, _, _ = trained
    (tmp_path / "taken").mkdir()
    assert main(["export", "--run", str(root / "run"), "--to", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_unknown_users_and_items_are_one_line(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, arts, _ = trained
    known_item = next(iter(arts.ids.items))
    pairs = pd.DataFrame({"user_id": [f"ghost{i}" for i in range(12)] + [next(iter(arts.ids.users))],
                          "item_id": [known_item] * 12 + ["no-such-item"]})
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    code = _predict("--run", str(root / "run"), "--pairs", str(tmp_path / "pairs.csv"), "--out",
                    str(tmp_path / "s.csv"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "12 user_id(s) unknown" in err and "'ghost0'" in err and "'ghost11'" not in err
    assert "1 item_id(s) unknown" in err and "'no-such-item'" in err
    assert not (tmp_path / "s.csv").exists()


def test_top_k_ranks_each_users_candidates(trained, tmp_path: Path) -> None:
    root, arts, rows = trained
    users = list(dict.fromkeys(_raw_pairs(arts, rows)["user_id"]))[:3]
    items = list(arts.ids.items)[:6]
    candidates = pd.DataFrame([(u, i) for u in users for i in items], columns=["user_id", "item_id"])
    candidates.to_csv(tmp_path / "candidates.csv", index=False)
    assert _predict("--run", str(root / "run"), "--candidates", str(tmp_path / "candidates.csv"), "--top-k", "4",
                    "--out", str(tmp_path / "top.csv")) == 0
    assert _predict("--run", str(root / "run"), "--pairs", str(tmp_path / "candidates.csv"), "--out",
                    str(tmp_path / "all.csv")) == 0
    top = pd.read_csv(tmp_path / "top.csv", dtype={"user_id": str, "item_id": str})
    every = pd.read_csv(tmp_path / "all.csv", dtype={"user_id": str, "item_id": str})
    assert list(top.columns) == ["user_id", "rank", "item_id", "score", "model", "cold"]
    assert top.groupby("user_id").size().to_dict() == {u: 4 for u in users}
    for user, group in top.groupby("user_id"):
        assert group["rank"].tolist() == [1, 2, 3, 4]
        assert group["score"].is_monotonic_decreasing
        best = every[every["user_id"] == user]["score"].nlargest(4).to_numpy()
        np.testing.assert_allclose(group["score"].to_numpy(), best, atol=1e-6)


def test_a_stage2_run_predicts_sigmoid_mf_scores(tmp_path: Path) -> None:
    cfg = load_config("tiny", "mf", [f"runtime.cache_dir={tmp_path / 'cache'}", "runtime.progress=false"])
    run_pipeline(cfg, tmp_path / "run")
    arts = artifacts_from_run(tmp_path / "run")
    rows = _test_rows(arts.cfg, arts.ds)
    _raw_pairs(arts, rows).to_csv(tmp_path / "pairs.csv", index=False)
    assert _predict("--run", str(tmp_path / "run"), "--pairs", str(tmp_path / "pairs.csv"), "--out",
                    str(tmp_path / "scores.csv")) == 0
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert (scores["model"] == "stage2").all() and scores["score"].between(0, 1).all()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    auc = roc_auc_score(rows["label"].to_numpy(), scores["score"].to_numpy())
    assert auc == pytest.approx(metrics["stage2"]["test"]["auc"], abs=1e-6)


def test_a_finished_mlflow_run_scores_as_its_run_folder(trained, run_scores, capsys) -> None:
    """A sweep trial is known by its MLflow run (its config.yaml artifact), not a run folder: ``--mlflow-run ID``
    rebuilds the same model from the stage cache; a run that did not finish, or an unknown id, is one line."""
    from mlflow import MlflowClient

    root, arts, _ = trained
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("search-x", artifact_location=str(root / "artifacts"))
    finished, running = (client.create_run(experiment).info.run_id for _ in range(2))
    for run_id in (finished, running):
        client.log_text(run_id, (root / "run" / "config.yaml").read_text(), "config.yaml")
    client.log_metric(finished, "valid/auc", 0.5)
    client.set_terminated(finished, "FINISHED")
    out = root / "mlflow-scores.csv"
    assert _predict("--mlflow-run", finished, "--tracking-uri", uri, "--pairs", str(root / "pairs.csv"),
                    "--out", str(out)) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype={"user_id": str, "item_id": str}), run_scores)
    capsys.readouterr()
    for run_id, message in ((running, "the run is RUNNING, not FINISHED"), ("0" * 32, "no such run")):
        assert _predict("--mlflow-run", run_id, "--tracking-uri", uri, "--pairs", str(root / "pairs.csv"),
                        "--out", str(root / "never.csv")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not (root / "never.csv").exists()
