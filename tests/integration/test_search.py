"""Tiny-profile sweeps through Ray Tune: TPE and ASHA, fractional-GPU packing, fail-fast, failures, resume after
Ctrl-C, the MLflow hierarchy, bad input, and a sweep through a local Ray head node joined with --address."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from sellarec.config import apply_overrides, from_dict, load_config
from sellarec.errors import ResourceError
from sellarec.runtime import repo_root
from sellarec.tuning.sweep import SweepOptions, main, run_sweep

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

ROOT = repo_root()
SCRIPT = ROOT / "tune" / "search.py"
VENV_BIN = Path(sys.executable).parent
PROJECTOR_STAGE3 = """
metric: valid/auc
num_samples: 4
sampler: {kind: tpe, seed: 0}
params:
  stage3.collab_projector.type: {choice: [mlp, linear, mlp_residual]}
  stage3.projector_init: {choice: [warmup, random], when: {stage3.collab_projector.type: [mlp, mlp_residual]},
                          otherwise: random}
  stage3.lr: {float: [1.0e-4, 1.0e-2], log: true}
"""


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray for the in-process sweeps: 2 CPUs and one logical GPU (for the packing test)."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stage cache: stages 1-2 of the tiny profile are computed by the first sweep and reused after."""
    return tmp_path_factory.mktemp("stage-cache")


@pytest.fixture(scope="session")
def space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spaces") / "stage3.yaml"
    path.write_text(PROJECTOR_STAGE3)
    return path


def _options(tmp: Path, cache: Path, space: Path | str, **kw) -> SweepOptions:
    base = dict(space=str(space), profile="tiny", overrides=(f"runtime.cache_dir={cache}",),
                storage=str(tmp / "storage"), tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
                report_dir=str(tmp / "reports"), cpus_per_trial=1.0, gpus_per_trial=0.0)
    base.update(kw)
    return SweepOptions(**base)


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str, sweep: str) -> tuple[object, list]:
    """(parent run, child runs) of a sweep."""
    client = _client(uri)
    exps = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in exps], filter_string=f"tags.sweep = '{sweep}'",
                              max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "parent"]
    assert len(parents) == 1
    return parents[0], [r for r in runs if r.data.tags.get("role") == "trial"]


def _study(folder: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}")


@pytest.mark.slow
def test_tpe_sweep_records_the_mlflow_hierarchy(ray_cluster, tmp_path: Path, shared_cache: Path,
                                                space_file: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SELLAREC_PROGRESS_SECONDS", "0.5")
    opts = _options(tmp_path, shared_cache, space_file, scheduler="fifo", name="tpe")
    out = run_sweep(opts)
    assert not out.interrupted and len(out.rows) == 4
    # progress lines carry what the trials published from their workers (not only "starting" of the driver)
    printed = capsys.readouterr().out
    assert re.search(r"\d/4 done, \d running: \S+ (starting: data|stage[123] |waiting for stage)", printed), printed
    assert not (out.path / "status").exists()
    assert {r.status for r in out.rows} == {"finished"}
    # ranking and best configuration agree with the metrics themselves
    values = [r.metrics["valid/auc"] for r in out.rows]
    assert values == sorted(values, reverse=True) and out.best_params == out.rows[0].params

    parent, children = _runs(opts.tracking_uri, "tpe")
    assert parent.info.status == "FINISHED"
    assert {"space": "stage3", "profile": "tiny", "sampler": "tpe", "scheduler": "fifo"}.items() \
        <= parent.data.tags.items()
    assert parent.data.tags["git_commit"] and parent.data.params["num_samples"] == "4"
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.tags["trial_id"] for c in children) == sorted(r.trial_id for r in out.rows)
    for stage in ("stage1", "stage2"):                   # shared by every trial: computed once at most, then hits
        assert sum(1 - c.data.metrics[f"cache/{stage}"] for c in children) <= 1, stage
    client = _client(opts.tracking_uri)
    base = load_config("tiny", overrides=[f"runtime.cache_dir={shared_cache}", "runtime.progress=false"])
    for child in children:
        m, params = child.data.metrics, child.data.params
        for key in ("valid/auc", "valid/uauc", "valid/auc_ci_low", "valid/auc_ci_high"):
            assert 0.0 <= m[key] <= 1.0, key
        assert m["valid/auc_ci_low"] <= m["valid/auc"] <= m["valid/auc_ci_high"]
        assert m["valid/rows"] == base.eval.max_valid_samples and m["valid/users"] >= 2
        assert not any(k.startswith("test") for k in m)              # a sweep selects on valid: test is skipped
        assert m["cost/trainable_params"] > 0 and m["cost/stage3_seconds"] > 0
        assert params["stage3.collab_projector.type"] in {"mlp", "linear", "mlp_residual"}
        if params["stage3.collab_projector.type"] == "linear":
            assert params["stage3.projector_init"] == "random"
        # the artifact is the trial's resolved config: base + its parameters, recomputed here
        local = client.download_artifacts(child.info.run_id, "config.yaml", str(tmp_path))
        import yaml

        logged = from_dict(yaml.safe_load(Path(local).read_text()))
        expected = apply_overrides(base, {"stage3.collab_projector.type": params["stage3.collab_projector.type"],
                                          "stage3.projector_init": params["stage3.projector_init"],
                                          "stage3.lr": float(params["stage3.lr"]), "runtime.threads": 1,
                                          "runtime.device": "cpu"})
        assert logged == expected
    # stages 1-2 ran once for the whole sweep (the shared cache), stage 3 per trial
    assert sum(c.data.metrics["cache/stage1"] == 0 for c in children) <= 1
    # report, plot, study
    report = Path(opts.report_dir) / "tpe.md"
    text = report.read_text()
    assert "## Top 4 of 4 trials" in text and "PED-ANOVA" in text and "fANOVA" in text and "(tpe.png)" in text
    assert (Path(opts.report_dir) / "tpe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    study = _study(out.path, "tpe")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 4
    # --resume of a sweep whose trials all ended re-reports from MLflow: no trial runs again, no run is added
    ended = {c.info.run_id: c.info.end_time for c in children}
    again = run_sweep(SweepOptions(name="tpe", resume=True, storage=opts.storage, gpus_per_trial=0.0))
    assert [(r.trial_id, r.metrics["valid/auc"]) for r in again.rows] == [(r.trial_id, r.metrics["valid/auc"])
                                                                           for r in out.rows]
    parent, children = _runs(opts.tracking_uri, "tpe")
    assert {c.info.run_id: c.info.end_time for c in children} == ended and parent.info.status == "FINISHED"
    # the report's commands retrain the top trial (the same valid AUC: same configuration, cached stages) and
    # export it as a bundle (run from a scratch folder: their paths are relative to where they run); then score
    # with and export the top trial itself, by its MLflow run id
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [c.replace("\\\n", " ").split() for c in re.split(r"\n(?=python )", block.strip())]
    assert [c[3] for c in commands] == ["train", "export", "predict", "export"]
    top_run = next(c.info.run_id for c in children if c.data.tags["trial_id"] == out.rows[0].trial_id)
    assert [c[c.index("--mlflow-run") + 1] for c in commands[2:]] == [top_run, top_run]
    work = tmp_path / "from-report"
    work.mkdir()
    for command in commands[:2] + commands[3:]:
        words = [w.strip("'") for w in command[1:]]
        done = subprocess.run([sys.executable, *words], cwd=work, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(repo_root())})
        assert done.returncode == 0, done.stderr[-2000:]
    trained = json.loads((work / "runs" / "tpe-best" / "metrics.json").read_text())
    assert trained["stage3"]["valid"]["auc"] == pytest.approx(out.rows[0].metrics["valid/auc"], abs=1e-9)
    assert (work / "bundles" / "tpe-best" / "README.md").is_file()
    assert (work / "bundles" / "tpe-top-trial" / "README.md").is_file()


@pytest.mark.slow
def test_mf_space_searches_plain_mf_on_every_valid_row(ray_cluster, tmp_path: Path, shared_cache: Path) -> None:
    from sellarec.data.dataset import load_dataset

    # tiny's MF is 16-d, outside the space's widths: the incumbent needs a width the space searches
    opts = _options(tmp_path, shared_cache, "mf", name="mf", num_samples=3,
                    overrides=(f"runtime.cache_dir={shared_cache}", "stage2.emb_dim=32"))
    out = run_sweep(opts)
    assert [r.status for r in out.rows] == ["finished"] * 3
    parent, children = _runs(opts.tracking_uri, "mf")
    assert parent.data.tags["scheduler"] == "fifo"                       # the space's scheduler
    base = load_config("tiny", overrides=[f"runtime.cache_dir={shared_cache}"])
    valid_rows = len(load_dataset(base.data, shared_cache).split("valid"))
    for child in children:
        m = child.data.metrics
        assert m["valid/rows"] == valid_rows                             # eval.max_valid_samples: null
        assert "cache/stage1" not in m and "cache/stage3" not in m       # plain MF: no LLM stage ran
        assert set(child.data.params) >= {"stage2.lr", "stage2.weight_decay", "stage2.emb_dim", "stage2.batch_size"}
    report = (Path(opts.report_dir) / "mf.md").read_text()
    assert "needs at least 8 finished trials, has 3" in report
    first = min(children, key=lambda c: c.info.start_time)   # the incumbent runs first: tiny's own MF setting
    assert float(first.data.params["stage2.lr"]) == base.stage2.lr
    assert float(first.data.params["stage2.weight_decay"]) == base.stage2.weight_decay
    assert f"The incumbent, trial `{first.data.tags['trial_id']}`" in report


@pytest.mark.slow
def test_asha_stops_only_at_stage3_evaluations(ray_cluster, tmp_path: Path, shared_cache: Path,
                                               space_file: Path) -> None:
    opts = _options(tmp_path, shared_cache, space_file, scheduler="asha", name="asha", seed=1)
    out = run_sweep(opts)
    assert len(out.rows) == 4 and {r.status for r in out.rows} <= {"finished", "stopped"}
    parent, children = _runs(opts.tracking_uri, "asha")
    client = _client(opts.tracking_uri)
    assert parent.info.status == "FINISHED" and len(children) == 4
    killed = 0
    for child in children:
        steps = {m.step for m in client.get_metric_history(child.info.run_id, "valid/auc")}
        # tiny stage 3: 32 prompts / batch 8 = 4 steps; with ASHA the sweep evaluates at steps 2 and 4
        assert steps <= {2, 4}
        assert child.info.status in ("FINISHED", "KILLED")
        stopped = child.info.status == "KILLED"
        killed += stopped
        # a sweep selects on valid, so no trial scores test; only a finished one logs its final valid interval
        assert "test/auc" not in child.data.metrics
        assert stopped == ("valid/auc_ci_low" not in child.data.metrics)
        assert stopped == (child.data.tags.get("stopped_by") == "scheduler")
    states = sorted(t.state.name for t in _study(out.path, "asha").trials)
    assert states.count("PRUNED") == killed and states.count("COMPLETE") == 4 - killed


@pytest.mark.slow
def test_fractional_gpu_packs_four_trials_on_one_gpu(ray_cluster, tmp_path: Path, space_file: Path) -> None:
    # A fresh cache: the first trial computes stages 1-2 while the others wait on the cache lock, so all four
    # are alive at once if (and only if) Ray placed them together on the one logical GPU.
    opts = _options(tmp_path, tmp_path / "cache", space_file, scheduler="fifo", name="pack",
                    cpus_per_trial=0.25, gpus_per_trial=0.25)
    out = run_sweep(opts)
    assert {r.status for r in out.rows} == {"finished"}
    _, children = _runs(opts.tracking_uri, "pack")
    starts = [c.info.start_time for c in children]
    ends = [c.info.end_time for c in children]
    assert len(children) == 4 and max(starts) < min(ends)   # one moment when all four ran


def test_gpu_request_beyond_the_cluster_fails_before_fit(ray_cluster, tmp_path: Path, shared_cache: Path,
                                                         space_file: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ResourceError, match=r"trial asks for 2 GPU but Ray sees 1 GPUs; pass --gpus-per-trial 0"):
        run_sweep(_options(tmp_path, shared_cache, space_file, gpus_per_trial=2.0, name="nogpu"))
    assert time.monotonic() - start < 30
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "storage" / "nogpu").exists()


@pytest.mark.slow
def test_failing_trials_are_retried_and_recorded(ray_cluster, tmp_path: Path, shared_cache: Path) -> None:
    space = tmp_path / "broken.yaml"   # a valid config value whose weights do not exist: fails inside the trial
    space.write_text("num_samples: 1\nsampler: {kind: random}\nparams:\n"
                     "  backbone.name: {choice: [/nonexistent/backbone]}\n")
    opts = _options(tmp_path, shared_cache, space, scheduler="fifo", name="broken", max_failures=1)
    out = run_sweep(opts)
    assert [r.status for r in out.rows] == ["failed"]
    assert all("backbone '/nonexistent/backbone' is not a directory" in r.error for r in out.rows)
    parent, children = _runs(opts.tracking_uri, "broken")
    assert parent.info.status == "FINISHED" and len(children) == 1
    for child in children:
        assert child.info.status == "FAILED"
        assert "backbone '/nonexistent/backbone' is not a directory" in child.data.tags["error"]
        assert child.data.tags["failures"] == "2"            # the first attempt and one retry
    assert [t.state.name for t in _study(out.path, "broken").trials] == ["FAIL"]
    assert "Failed trials:" in (Path(opts.report_dir) / "broken.md").read_text()


# --------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("change, message", [
    ({"num_samples": 0}, r"--num-samples=0 must be >= 1"),
    ({"metric": "test/auc"}, r"--metric='test/auc' is not one of valid/auc, valid/uauc"),
    ({"scheduler": "asha", "metric": "valid/uauc"}, r"--scheduler asha needs --metric valid/auc"),
    ({"cpus_per_trial": 0.0}, r"--cpus-per-trial=0.0 must be > 0"),
    ({"gpus_per_trial": 1.5}, r"--gpus-per-trial=1.5 must be a fraction in \[0, 1\] or a whole number"),
    ({"space": "projectr"}, r"unknown space 'projectr' \(did you mean 'projector'\?"),
    ({"overrides": ("stage3.tokns=[user]",)}, r"unknown config key 'stage3.tokns'"),
    ({"profile": "nope"}, r"unknown profile 'nope'"),
    ({"resume": True, "name": None}, r"--resume needs --name NAME"),
    ({"resume": True, "name": "missing"}, r"no sweep 'missing' to resume"),
    ({"name": "a b"}, r"--name='a b' may only use letters"),
    ({"address": "127.0.0.1:1", "storage": None}, r"--address needs --storage"),
    ({"address": "127.0.0.1:1", "tracking_uri": "sqlite:///x.db"}, r"--address needs --tracking-uri of a server"),
    ({"space": "training", "scheduler": "asha"},
     r"space training searches stage3.max_train_samples, which changes the number of stage-3 steps; "
     r".*--scheduler fifo"),
    ({"space": "mf", "scheduler": "asha", "overrides": ("stage2.emb_dim=32",)},
     r"ASHA stops trials at stage-3 evaluations and these trials end at stage2; pass --scheduler fifo"),
    ({"space": "mf"}, r"incumbent: the configuration's stage2.emb_dim=16 is outside the searched values"),
])
def test_bad_options_are_one_line_exit_2(tmp_path: Path, space_file: Path, capsys, change: dict,
                                         message: str) -> None:
    change = dict(change)
    opts = _options(tmp_path, tmp_path / "cache", change.pop("space", space_file), **change)
    assert main(opts) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(("ConfigError: ", "ResourceError: "))
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "storage").exists()


def test_existing_name_without_resume_is_refused(tmp_path: Path, space_file: Path, capsys) -> None:
    (tmp_path / "storage" / "taken").mkdir(parents=True)
    assert main(_options(tmp_path, tmp_path / "cache", space_file, name="taken")) == 2
    assert "sweep 'taken' already exists" in capsys.readouterr().err


def _script(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, **kw)


def test_script_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    for args, message in ([["--sampler", "cmaes"], "invalid choice: 'cmaes'"],
                          [["--space", str(tmp_path / "none.yaml")], "space file"],
                          [["--num-samples", "x"], "invalid int value"]):
        proc = _script(*args, "--storage", str(tmp_path / "s"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "m.db").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU path")
@pytest.mark.slow
def test_a_sweep_and_an_ablation_of_one_config_log_one_schema(ray_cluster, tmp_path: Path,
                                                              shared_cache: Path) -> None:
    """One trainable, one tracker: the same configuration run as a one-trial sweep and as an ablation's full model
    logs the same params and tags, and the same metric names but test's (a sweep selects on valid only)."""
    from sellarec.ablation.runner import run_ablation
    from sellarec.ablation.spec import parse_spec
    from sellarec.experiment.resources import Resources
    from sellarec.experiment.tracking import CHILD_TAGS

    lr = load_config("tiny", "sella").stage3.lr
    space = tmp_path / "one.yaml"
    space.write_text(f"metric: valid/auc\nnum_samples: 1\nscheduler: fifo\nparams:\n  stage3.lr: {{choice: [{lr}]}}\n")
    out = run_sweep(_options(tmp_path, shared_cache, space, name="one", preset="sella"))
    assert [r.status for r in out.rows] == ["finished"]
    spec = parse_spec({"profile": "tiny", "preset": "sella", "seeds": 1,
                       "components": {"other_lr": {"set": {"stage3.lr": lr / 2}}}}, "one")
    summary = run_ablation(spec, storage=tmp_path / "ablations", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                           resources=Resources(gpus_per_trial=0.0), cache_dir=shared_cache, max_cells=1)
    assert (summary.ran, summary.failures) == (1, [])
    client = _client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (swept,) = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "one")[1]
    exp = client.get_experiment_by_name("ablations").experiment_id
    (ablated,) = client.search_runs([exp], "tags.role = 'trial'")
    assert swept.data.params == ablated.data.params
    assert swept.data.tags["run_key"] == ablated.data.tags["run_key"]
    for run in (swept, ablated):
        assert set(CHILD_TAGS) <= set(run.data.tags) and run.info.status == "FINISHED"
    tested = {k for k in ablated.data.metrics if k.startswith("test") or "_test" in k}
    assert tested and set(swept.data.metrics) == set(ablated.data.metrics) - tested
    for key in ("valid/auc", "valid/auc_ci_low", "valid/rows"):   # one trained model, one valid score
        assert swept.data.metrics[key] == ablated.data.metrics[key], key


def test_gpu_request_without_cuda_fails_within_seconds(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = _script("--smoke-test", "--gpus-per-trial", "0.5", "--storage", str(tmp_path / "s"),
                   "--tracking-uri", f"sqlite:///{tmp_path}/m.db", timeout=60)
    assert time.monotonic() - start < 30
    assert proc.returncode == 2
    assert proc.stderr == ("ResourceError: --gpus-per-trial=0.5 but this machine has no CUDA GPU; pass "
                           "--gpus-per-trial 0, or --address of a Ray cluster with GPUs\n")
    assert not (tmp_path / "s").exists() and not (tmp_path / "m.db").exists()


# --------------------------------------------------------------------------------------------------- resume


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _finished_children(uri: str, sweep: str) -> list:
    try:
        return [c for c in _runs(uri, sweep)[1] if c.info.status == "FINISHED"]
    except Exception:  # noqa: BLE001 - the store may not exist yet
        return []


def _start_sweep(tmp_path: Path, cache: Path, space_file: Path, name: str, finished: int,
                 **popen) -> subprocess.Popen:
    """Start a 4-trial FIFO sweep in a subprocess and return once ``finished`` of its trials have FINISHED runs."""
    args = ["--space", str(space_file), "--profile", "tiny", "--set", f"runtime.cache_dir={cache}",
            "--scheduler", "fifo", "--max-concurrent", "1", "--name", name, "--storage", str(tmp_path / "s"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--report-dir", str(tmp_path / "reports")]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT, **popen)
    try:
        # sweep.json is written after the driver created the MLflow store: only then may this process open it
        _wait_for(lambda: (tmp_path / "s" / name / "sweep.json").is_file(), 120, "the sweep to start", proc)
        _wait_for(lambda: len(_finished_children(f"sqlite:///{tmp_path / 'mlflow.db'}", name)) >= finished, 300,
                  f"{finished} finished trials", proc)
    except BaseException:
        proc.kill()
        raise
    return proc


@pytest.mark.slow
def test_ctrl_c_then_resume_loses_and_repeats_nothing(tmp_path: Path, shared_cache: Path, space_file: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _start_sweep(tmp_path, shared_cache, space_file, "res", 1, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
    try:
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    resume = next(line.strip() for line in err.splitlines() if "--resume" in line)
    assert resume == f"python tune/search.py --resume --name res --storage {tmp_path / 's'}"
    parent, children = _runs(uri, "res")
    assert parent.info.status == "KILLED" and "RUNNING" not in {c.info.status for c in children}
    done_before = {c.data.tags["trial_id"]: (c.info.run_id, c.info.end_time) for c in children
                   if c.info.status == "FINISHED"}
    assert 1 <= len(done_before) < 4

    proc2 = _script(*resume.split()[2:], timeout=300)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert "computing the shared" not in proc2.stdout          # a resume never recomputes ahead of its trials
    parent, children = _runs(uri, "res")
    assert parent.info.status == "FINISHED"
    ids = [c.data.tags["trial_id"] for c in children]
    assert len(ids) == 4 and len(set(ids)) == 4                     # no duplicate runs, no extra trials
    assert {c.info.status for c in children} == {"FINISHED"}
    for c in children:                                              # finished trials were not run again
        if c.data.tags["trial_id"] in done_before:
            assert (c.info.run_id, c.info.end_time) == done_before[c.data.tags["trial_id"]]
    summary = json.loads((tmp_path / "s" / "res" / "summary.json").read_text())
    assert sorted(r["trial_id"] for r in summary["rows"]) == sorted(ids)
    # the report's wall time covers both invocations: more than the resume alone took
    wall = json.loads((tmp_path / "s" / "res" / "wall.json").read_text())["seconds"]
    assert wall > summary["seconds"] > 0
    assert f"wall time {wall / 60:.1f} min" in (tmp_path / "reports" / "res.md").read_text()
    assert sorted(t.state.name for t in _study(tmp_path / "s" / "res", "res").trials) == ["COMPLETE"] * 4


@pytest.mark.slow
def test_sigkill_of_the_driver_then_resume_retrains_no_finished_trial(tmp_path: Path, shared_cache: Path,
                                                                      space_file: Path) -> None:
    """SIGKILL the driver once two trials finished: --resume stops what its Ray left running, finishes the sweep, no
    finished trial is trained again (its kept final report is untouched) and no MLflow run is reopened or logged twice.
    (A trial that started within the last second before the kill is unknown to the restored Tune state: its run stays
    in MLflow, KILLED or FINISHED, and Tune samples another; hence "at least four".)"""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _start_sweep(tmp_path, shared_cache, space_file, "kill", 2, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, start_new_session=True)
    ours = psutil.Process(proc.pid).children(recursive=True)   # the driver's private Ray
    os.kill(proc.pid, signal.SIGKILL)     # the driver alone, no chance to save, close or stop its Ray
    proc.wait(timeout=60)
    done = {c.data.tags["trial_id"]: (c.info.run_id, c.info.end_time) for c in _finished_children(uri, "kill")}
    kept = {t: tmp_path / "s" / "kill" / "final_reports" / f"{t}.json" for t in done}   # written once, at the end
    written = {t: path.stat().st_mtime_ns for t, path in kept.items()}

    left = [p for p in ours if _running(p)]                 # Ray's agents outlive their driver

    resumed = _script("--resume", "--name", "kill", "--storage", str(tmp_path / "s"), timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]   # a restarted trial no longer crashes the Optuna searcher
    if left:
        assert "left by a killed sellarec driver" in resumed.stdout + resumed.stderr
    _, alive = psutil.wait_procs(ours, timeout=10)
    alive = [p for p in alive if _running(p)]
    assert not alive, f"left by the killed driver: {[p.pid for p in alive]}"   # stopped by the resume's start
    parent, children = _runs(uri, "kill")
    assert parent.info.status == "FINISHED" and "RUNNING" not in {c.info.status for c in children}
    assert sum(c.info.status == "FINISHED" for c in children) >= 4
    client = _client(uri)
    for child in children:
        trial = child.data.tags["trial_id"]
        if trial in done:
            assert (child.info.run_id, child.info.end_time) == done[trial]              # not reopened
            assert kept[trial].stat().st_mtime_ns == written[trial]                     # not trained again
        assert len(client.get_metric_history(child.info.run_id, "valid/auc")) <= 1     # never logged twice


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan ended but not yet reaped by init is not ours any more)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --------------------------------------------------------------------------------------------------- cluster


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.slow
def test_smoke_sweep_through_a_local_head_node(tmp_path: Path, shared_cache: Path) -> None:
    """`ray start --head` on 127.0.0.1 + an MLflow server, then `tune/search.py --smoke-test --address`."""
    ray_port, mlflow_port = _free_port(), _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # A private, short temp dir (unix socket paths must stay under 108 bytes): the head's sessions and its
    # ray_current_cluster file stay out of /tmp/ray, where a bare ray.init() elsewhere would find and join it.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rayh", dir="/tmp"))
    # --block ties the head's processes to this one: terminating it stops exactly what it started
    head = subprocess.Popen([str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={ray_port}",
                             "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = subprocess.Popen([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri",
                               f"sqlite:///{tmp_path / 'server.db'}", "--host", "127.0.0.1", "--port",
                               str(mlflow_port), "--workers", "1"],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{mlflow_port}"
    address = f"127.0.0.1:{ray_port}"

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200
        except OSError:
            return False

    def head_up() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", ray_port)) == 0

    try:
        _wait_for(head_up, 60, "the Ray head", head)
        _wait_for(healthy, 60, "the MLflow server", server)
        common = ["--address", address, "--storage", str(tmp_path / "shared"), "--tracking-uri", uri,
                  "--set", f"runtime.cache_dir={shared_cache}"]
        start = time.monotonic()
        nogpu = _script("--smoke-test", "--gpus-per-trial", "0.25", "--name", "g", *common, timeout=120)
        assert nogpu.returncode == 2 and time.monotonic() - start < 60
        assert nogpu.stderr.strip().splitlines()[-1] == ("ResourceError: trial asks for 0.25 GPU but Ray sees 0 GPUs; "
                                                         "pass --gpus-per-trial 0 or start Ray on a GPU node")
        proc = _script("--smoke-test", "--num-samples", "2", "--scheduler", "fifo", "--name", "remote", *common,
                       timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        parent, children = _runs(uri, "remote")
        assert parent.info.status == "FINISHED" and len(children) == 2
        assert {c.info.status for c in children} == {"FINISHED"}
        assert (tmp_path / "shared" / "remote" / "remote.md").is_file()   # smoke reports stay in the sweep folder
    finally:
        _stop(head)
        _stop(server)
        shutil.rmtree(ray_tmp, ignore_errors=True)
