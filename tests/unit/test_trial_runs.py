"""One MLflow schema for sweep and ablation trials, checked without starting Ray: the driver's callback is driven with
stand-in trials on a sqlite store, then the runs are read back as the sweep report and the ablation report read them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from sellarec.config import apply_overrides, config_key, load_config, to_dict, to_flat_dict
from sellarec.experiment.tracking import CHILD_TAGS, RunTracker, choice_key

pytest.importorskip("ray.tune")

from sellarec.experiment.callbacks import TrialRuns, loggable_metrics  # noqa: E402 - needs Ray
from sellarec.experiment.trial import COMPLETE_KEY, TrialConfigs, TrialJob  # noqa: E402

PARAMS = {"stage3.lr": 0.01, "stage3.tokens": ["user", "item"]}
# A final report as Tune hands it to the driver: the trial's numbers plus Tune's own bookkeeping.
FINAL = {"valid/auc": 0.7, "valid/auc_ci_low": 0.6, "valid/auc_ci_high": 0.8, "train/step": 4.0,
         "cost/compute_seconds": 3.0, "cache/stage1": 1.0, COMPLETE_KEY: 1.0, "training_iteration": 2,
         "time_this_iter_s": 0.5, "trial_id": "t", "done": True, "config": {"job": "x"}}


class _Resources:
    required_resources = {"CPU": 2.0, "GPU": 0.0}


class _Trial:
    """What the callbacks read of a Tune trial."""

    def __init__(self, trial_id: str, config: dict[str, Any], error: str = "") -> None:
        self.trial_id, self.config, self.placement_group_factory = trial_id, config, _Resources()
        self.last_result: dict[str, Any] = {}
        self.num_failures, self.error_file, self.path, self._error = 0, None, "/nowhere", error

    def get_error(self) -> str:
        return self._error

    def __str__(self) -> str:
        return f"run_trial_{self.trial_id}"


def _finish(callback: TrialRuns, trial: _Trial, result: dict[str, Any]) -> None:
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, result)
    trial.last_result = result
    callback.on_trial_complete(0, [], trial)


@pytest.fixture()
def base() -> dict[str, Any]:
    return to_dict(load_config("tiny"))


def test_a_sweep_and_an_ablation_of_one_config_log_the_same_params_tags_and_metrics(tmp_path: Path, base) -> None:
    sweep = RunTracker(f"sqlite:///{tmp_path / 'm.db'}", "search-x")
    ablation = RunTracker(sweep.uri, "ablations")
    config = to_dict(apply_overrides(load_config("tiny"), PARAMS))
    sweep_cb = TrialRuns(sweep, sweep.start_parent("s", {"sweep": "s"}), TrialConfigs(base=base, tags={"sweep": "s"}))
    job = TrialJob(config, {"ablation": "a", "cell": "-warm", "seed": "0"}, ("stage3.tokens",))
    ablation_cb = TrialRuns(ablation, ablation.start_parent("a", {"ablation": "a"}), TrialConfigs(jobs={"j": job}))
    _finish(sweep_cb, _Trial("s1", dict(PARAMS)), dict(FINAL))
    _finish(ablation_cb, _Trial("a1", {"job": "j"}), dict(FINAL))
    (one,), (two,) = sweep.children(sweep_cb.parent_id), ablation.children(ablation_cb.parent_id)

    assert one.data.params == two.data.params                      # the whole flat config, byte for byte
    expected = apply_overrides(load_config("tiny"), {**PARAMS, "runtime.threads": 2, "runtime.device": "cpu",
                                                     "runtime.progress": False})
    assert one.data.params == {k: str(choice_key(v)) for k, v in to_flat_dict(expected).items()}
    for run in (one, two):
        assert set(CHILD_TAGS) <= set(run.data.tags) and run.data.tags["role"] == "trial"
        assert run.data.tags["run_key"] == config_key(expected) and run.info.status == "FINISHED"
    assert one.data.tags["varied"] == "stage3.lr,stage3.tokens" and two.data.tags["varied"] == "stage3.tokens"
    assert one.data.tags["trial_name"] == "run_trial_s1" and two.info.run_name == "-warm seed=0"
    assert set(one.data.metrics) == set(two.data.metrics) == {
        "valid/auc", "valid/auc_ci_low", "valid/auc_ci_high", "train/step", "cost/compute_seconds", "cache/stage1"}


def test_a_retry_reuses_the_run_and_a_failure_records_the_exception(tmp_path: Path, base) -> None:
    tracker = RunTracker(f"sqlite:///{tmp_path / 'm.db'}", "search-x")
    callback = TrialRuns(tracker, tracker.start_parent("s", {}), TrialConfigs(base=base))
    error = "Traceback (most recent call last):\n  ...\nValueError: Input contains NaN\n"
    trial = _Trial("t1", dict(PARAMS), error=error)
    callback.on_trial_start(0, [], trial)
    trial.num_failures = 1
    callback.on_trial_recover(0, [], trial)
    callback.on_trial_start(0, [], trial)                          # the retry
    trial.num_failures = 2
    callback.on_trial_error(0, [], trial)
    (run,) = tracker.children(callback.parent_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "ValueError: Input contains NaN"
    assert run.data.tags["failures"] == "2" and callback.failures[0][1] == "ValueError: Input contains NaN"


def test_a_retry_after_a_dead_worker_is_tagged_with_the_local_error_file(tmp_path: Path, base) -> None:
    """Tune writes error.txt into the trial's local folder and syncs the storage copy (what ``get_error`` reads)
    later: the reason comes from the local file (issue 13: retried trials were tagged ``unknown error``)."""
    tracker = RunTracker(f"sqlite:///{tmp_path / 'm.db'}", "search-x")
    callback = TrialRuns(tracker, tracker.start_parent("s", {}), TrialConfigs(base=base))
    trial = _Trial("t1", dict(PARAMS), error="")                   # the storage copy is not there yet
    trial.error_file = str(tmp_path / "error.txt")
    Path(trial.error_file).write_text("Failure # 1\nTraceback ...\nray.exceptions.ActorDiedError: The actor died "
                                      "unexpectedly before finishing this task.\n")
    callback.on_trial_start(0, [], trial)
    trial.num_failures = 1
    callback.on_trial_recover(0, [], trial)
    (run,) = tracker.children(callback.parent_id)
    assert run.data.tags["error"].startswith("ray.exceptions.ActorDiedError: The actor died")
    assert run.info.status == "RUNNING" and run.data.tags["failures"] == "1"


def test_the_sweep_report_reads_its_trials_back_from_mlflow(tmp_path: Path, base) -> None:
    from sellarec.tuning.report import rows_from_runs
    from sellarec.tuning.space_file import load_space

    space = load_space(Path(__file__).resolve().parents[2] / "tune" / "spaces" / "projector.yaml")
    keys = space.keys
    tracker = RunTracker(f"sqlite:///{tmp_path / 'm.db'}", "search-projector")
    callback = TrialRuns(tracker, tracker.start_parent("s", {}), TrialConfigs(base=base))
    finished = {keys[0]: space.params[0].values_to_check()[0], keys[1]: space.params[1].values_to_check()[-1]}
    stopped = {keys[0]: space.params[0].values_to_check()[-1]}
    _finish(callback, _Trial("a", finished), dict(FINAL))
    _finish(callback, _Trial("b", stopped), {"valid/auc": 0.4, "train/step": 2.0})   # no final report
    rows = {r.trial_id: r for r in rows_from_runs(tracker.children(callback.parent_id), space)}
    assert (rows["a"].status, rows["b"].status) == ("finished", "stopped")
    assert rows["a"].params == finished and rows["b"].params == stopped   # typed back; only what the trial drew
    assert rows["a"].metrics["valid/auc"] == 0.7 and rows["b"].metrics["valid/auc"] == 0.4
    assert (rows["a"].index, rows["b"].index) == (0, 1)


def test_only_the_vocabulary_is_logged() -> None:
    assert loggable_metrics({**FINAL, "valid/auc": math.nan, "flag": True}).keys() == {
        "valid/auc", "valid/auc_ci_low", "valid/auc_ci_high", "train/step", "cost/compute_seconds", "cache/stage1"}


def test_a_trial_restarted_after_its_driver_was_killed_logs_nothing_twice(tmp_path: Path, base) -> None:
    tracker = RunTracker(f"sqlite:///{tmp_path / 'm.db'}", "search-x")
    parent = tracker.start_parent("s", {})
    _finish(TrialRuns(tracker, parent, TrialConfigs(base=base)), _Trial("t1", dict(PARAMS)), dict(FINAL))
    (run,) = tracker.children(parent)
    # The killed driver's Tune state still had t1 running: the resumed driver sees it start and report again.
    _finish(TrialRuns(tracker, parent, TrialConfigs(base=base)), _Trial("t1", dict(PARAMS)), dict(FINAL))
    (again,) = tracker.children(parent)
    assert (again.info.run_id, again.info.status, again.info.end_time) == (run.info.run_id, "FINISHED",
                                                                            run.info.end_time)
    assert len(tracker.client.get_metric_history(run.info.run_id, "valid/auc")) == 1


def test_a_finished_trial_reports_its_kept_final_report_instead_of_training(monkeypatch, tmp_path: Path, base) -> None:
    import json
    import types

    from ray import tune

    import sellarec.pipeline
    from sellarec.experiment.trial import run_trial

    (tmp_path / "t1.json").write_text(json.dumps({"valid/auc": 0.7, COMPLETE_KEY: 1.0}))
    request = types.SimpleNamespace(required_resources={"CPU": 1.0, "GPU": 0.0})
    context = types.SimpleNamespace(get_trial_resources=lambda: request, get_trial_dir=lambda: str(tmp_path / "x"),
                                    get_trial_id=lambda: "t1")
    reports: list[dict] = []
    monkeypatch.setattr(tune, "get_context", lambda: context)
    monkeypatch.setattr(tune, "report", reports.append)
    monkeypatch.setattr(sellarec.pipeline, "run_pipeline", lambda *a, **k: pytest.fail("trained again"))
    run_trial(dict(PARAMS), TrialConfigs(base=base, final_reports=str(tmp_path)))
    assert reports == [{"valid/auc": 0.7, COMPLETE_KEY: 1.0, "trial/replayed": 1.0}]


def test_a_replayed_final_report_is_not_logged_again_on_a_run_the_killed_driver_left_open(tmp_path: Path,
                                                                                           base) -> None:
    tracker = RunTracker(f"sqlite:///{tmp_path / 'm.db'}", "search-x")
    parent = tracker.start_parent("s", {})
    first, trial = TrialRuns(tracker, parent, TrialConfigs(base=base)), _Trial("t1", dict(PARAMS))
    first.on_trial_start(0, [], trial)
    first.on_trial_result(0, [], trial, dict(FINAL))           # logged; the driver dies before ending the run
    resumed = TrialRuns(tracker, parent, TrialConfigs(base=base))
    _finish(resumed, _Trial("t1", dict(PARAMS)), {**FINAL, "trial/replayed": 1.0})
    (run,) = tracker.children(parent)
    assert run.info.status == "FINISHED"
    assert len(tracker.client.get_metric_history(run.info.run_id, "valid/auc")) == 1


def test_a_sweep_trial_run_is_named_by_what_it_varies_and_keeps_its_name_on_a_resume(tmp_path: Path, base) -> None:
    keys = ["stage3.collab_projector.type", "stage3.semantic_projector.type", "stage3.semantic_projector.rank",
            "stage3.lr"]
    tracker = RunTracker(f"sqlite:///{tmp_path / 'm.db'}", "search-projector")
    parent = tracker.start_parent("s", {"sweep": "s"})
    drawn = {"stage3.semantic_projector.rank": 175, "stage3.lr": 0.0026341, "stage3.collab_projector.type": "mlp",
             "stage3.semantic_projector.type": "lowrank"}
    first = TrialRuns(tracker, parent, TrialConfigs(base=base, tags={"sweep": "s"}), keys)
    first.on_trial_start(0, [], _Trial("t1", dict(drawn)))
    # the driver dies; the resumed one (a new callback) sees the same trial start again
    _finish(TrialRuns(tracker, parent, TrialConfigs(base=base, tags={"sweep": "s"}), keys), _Trial("t1", dict(drawn)),
            dict(FINAL))
    _finish(first, _Trial("t2", {"stage3.lr": 1e-5}), dict(FINAL))
    runs = {r.data.tags["trial_id"]: r for r in tracker.children(parent)}
    assert runs["t1"].info.run_name == "collab=mlp sem=lowrank r=175 lr=0.00263"
    assert runs["t1"].data.tags["trial_name"] == "run_trial_t1"            # Tune's name stays a tag
    assert runs["t2"].info.run_name == "lr=1e-5"
