"""Finished ablation runs carried from one MLflow store into another (sellarec.ablation.carryover).

Store A holds runs of real jobs (the components spec on the tiny profile, 2 cells x 2 seeds) with known metric
values; its export is imported into an empty store B. Expectations are the values written into A, not the module's
own output: B's report reads the same numbers, the runner's resume finds exactly the imported jobs finished, a run
of another configuration or another data fingerprint is refused with its reason, and a second import adds nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sellarec.ablation.carryover import export_runs, import_runs, kernel_set, kernel_warnings, read_runs, runs_path
from sellarec.ablation.records import load_ablation_runs
from sellarec.ablation.report import write_report
from sellarec.ablation.runner import _sync_children, plan_jobs
from sellarec.ablation.spec import load_spec
from sellarec.ablation.tracking import EXPERIMENT, open_parent
from sellarec.errors import ConfigError
from sellarec.experiment.tracking import RunTracker
from sellarec.runtime import repo_root

SPECS = repo_root() / "ablations" / "specs"
PUBLISHED = repo_root() / "ablations" / "published.yaml"
FINGERPRINT = "fp-of-this-machine"


@pytest.fixture(scope="module")
def jobs() -> list:
    return plan_jobs(load_spec("components", SPECS), profile="tiny", seeds=2, max_cells=2)


def _value(cell: str, seed: int) -> float:
    return round(0.6 + 0.01 * seed + (0.05 if cell == "full" else 0.0), 4)


def _store_a(tmp_path: Path, jobs: list) -> str:
    uri = f"sqlite:///{tmp_path / 'a.db'}"
    tracker = RunTracker(uri, EXPERIMENT)
    parent = open_parent(tracker, "components", "tiny", {"machine": "Machine A, 2 cores", "jobs": str(len(jobs))})
    client = MlflowClient(tracking_uri=uri)
    for number, job in enumerate(jobs[:3]):   # three of the four jobs finished on machine A
        tags = {"mlflow.parentRunId": parent, "cell": job.cell.name, "seed": str(job.seed), "run_key": job.run_key,
                "cell_kind": job.cell.kind, "cell_index": str(job.cell.index), "description": job.cell.description,
                "data_fingerprint": FINGERPRINT, "git_commit": "abc1234", "label_rule": "rating >= 4 is positive"}
        run = client.create_run(tracker.experiment_id, start_time=1000 + number, tags=tags, run_name=f"r{number}")
        client.log_param(run.info.run_id, "data.dataset", "ml100k")
        client.log_param(run.info.run_id, "runtime.cache_dir", "/home/a/.cache/sellarec")
        client.log_metric(run.info.run_id, "test/auc", _value(job.cell.name, job.seed))
        client.set_terminated(run.info.run_id, "FINISHED", end_time=2000 + number)
    # a run of another configuration (an older spec) and one on other data: never imported
    for start, key, fingerprint in ((3000, "another-key", FINGERPRINT), (3001, jobs[3].run_key, "other-data")):
        tags = {"mlflow.parentRunId": parent, "cell": jobs[3].cell.name, "seed": str(jobs[3].seed), "run_key": key,
                "data_fingerprint": fingerprint, "cell_index": "0"}
        run = client.create_run(tracker.experiment_id, start_time=start, tags=tags)
        client.log_metric(run.info.run_id, "test/auc", 0.99)
        client.set_terminated(run.info.run_id, "FINISHED")
    tracker.end(parent, "FINISHED")
    return uri


def _prints(jobs: list) -> dict[tuple[str, str], str]:
    return {(j.cell.name, str(j.seed)): FINGERPRINT for j in jobs}


def test_runs_exported_from_one_store_are_imported_into_another_and_not_run_again(tmp_path: Path, jobs) -> None:
    uri_a = _store_a(tmp_path, jobs)
    exported = tmp_path / "components.runs.jsonl"
    # one run per (cell, seed): of the two extra runs at jobs[3]'s cell and seed, the later one (other data)
    assert export_runs(uri_a, "components", "tiny", exported, EXPERIMENT) == 4
    records = read_runs(exported)
    assert all(r["tags"]["machine"] == "Machine A, 2 cores" for r in records)   # the parent's, carried per run
    assert not any(k.startswith("mlflow.") for r in records for k in r["tags"])
    assert not any("runtime.cache_dir" in r["params"] for r in records)   # machine A's folder: not published

    uri_b = f"sqlite:///{tmp_path / 'b.db'}"
    tracker = RunTracker(uri_b, EXPERIMENT)
    parent = open_parent(tracker, "components", "tiny", {"machine": "Machine B", "jobs": str(len(jobs))})
    count, refused = import_runs(tracker, parent, records, jobs, _prints(jobs), "docs/x.runs.jsonl")
    assert count == 3 and len(refused) == 1 and "data fingerprint other-data differs" in refused[0]
    pending = _sync_children(tracker, parent, jobs)
    assert [(j.cell.name, j.seed) for j in pending] == [(jobs[3].cell.name, jobs[3].seed)]

    got = load_ablation_runs(uri_b, "components", "tiny").runs
    assert {(r.cell, int(r.seed)): r["test/auc"] for _, r in got.iterrows()} == {
        (j.cell.name, j.seed): _value(j.cell.name, j.seed) for j in jobs[:3]}
    assert set(got["imported_from"]) == {"docs/x.runs.jsonl"}
    assert import_runs(tracker, parent, records, jobs, _prints(jobs), "again") == (0, refused)   # nothing twice


def test_runs_of_other_data_are_refused_with_their_reason(tmp_path: Path, jobs) -> None:
    records = read_runs(_exported(tmp_path, jobs))
    tracker = RunTracker(f"sqlite:///{tmp_path / 'b.db'}", EXPERIMENT)
    parent = open_parent(tracker, "components", "tiny", {})
    other = {ident: "fp-elsewhere" for ident in _prints(jobs)}
    count, refused = import_runs(tracker, parent, records, jobs, other, "x")
    assert count == 0 and len(refused) == len(records)
    assert all("differs from this machine's fp-elsewhere" in reason for reason in refused)


def _exported(tmp_path: Path, jobs: list) -> Path:
    path = tmp_path / "runs.jsonl"
    export_runs(_store_a(tmp_path, jobs), "components", "tiny", path, EXPERIMENT)
    return path


def test_the_report_publishes_its_runs_and_names_the_machines_behind_them(tmp_path: Path, jobs) -> None:
    records = read_runs(_exported(tmp_path, jobs))
    uri_b = f"sqlite:///{tmp_path / 'b.db'}"
    tracker = RunTracker(uri_b, EXPERIMENT)
    parent = open_parent(tracker, "components", "tiny", {"machine": "Machine B", "jobs": str(len(jobs))})
    import_runs(tracker, parent, records, jobs, _prints(jobs), "docs/ablations/components.runs.jsonl")
    out = tmp_path / "report" / "components.md"
    md, _, runs = write_report(uri_b, "components", "tiny", out, PUBLISHED, "python ablations/report.py")
    assert runs == runs_path(out) and len(read_runs(runs)) == 3
    text = md.read_text()
    assert "**In progress: 3 of 4 runs (cells x seeds) have finished**" in text
    assert "Machine B (the runner's, 0 runs); imported runs (3): Machine A, 2 cores" in text
    assert "--import-runs" in text


@pytest.mark.parametrize(("content", "message"), [
    ("{not json\n", "line 1 is not JSON"),
    (json.dumps({"tags": {"cell": "full"}}) + "\n", "lacks run_name, start_time, end_time, params, metrics, seed"),
])
def test_a_malformed_runs_file_is_one_config_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_runs(path)
    with pytest.raises(ConfigError, match="no such file"):
        read_runs(tmp_path / "missing.jsonl")


def test_imported_runs_from_another_cpu_kernel_set_are_named_in_one_warning() -> None:
    here = "AMD EPYC (AVX512 kernels), 2 cores, no GPU, torch 2.13.0+cpu (1 thread(s)), CPython 3.11.7"

    def record(machine: str) -> dict:
        return {"tags": {"machine": machine, "cell": "full", "seed": "0", "run_key": "k"}}

    assert kernel_set(here) == "AVX512" and kernel_set("AMD EPYC, 2 cores") is None
    same = [record(here.replace("2 cores", "16 cores")) for _ in range(3)]
    assert kernel_warnings(same, here) == []
    other = [record("Intel Xeon (AVX2 kernels), 2 cores, no GPU"), record("Intel Xeon (AVX2 kernels), 4 cores"),
             record("AMD EPYC, 2 cores, no GPU")]   # the last one predates the kernel set in the line
    lines = kernel_warnings(same + other, here)
    assert len(lines) == 2
    assert lines[0].startswith("2 imported runs were made with AVX2 CPU kernels, this machine runs AVX512")
    assert lines[1].startswith("1 imported runs were made with a CPU kernel set they do not name")
    assert all("\n" not in line and "ATEN_CPU_CAPABILITY=avx2" in line for line in lines)


def test_runs_of_other_configurations_are_summed_up_in_one_line(tmp_path: Path, jobs) -> None:
    # another spec's runs file (e.g. components.runs.jsonl imported into the projector ablation): only the runs
    # whose configuration is a job here are imported, the rest are one line naming their cells
    exported = tmp_path / "components.runs.jsonl"
    export_runs(_store_a(tmp_path, jobs), "components", "tiny", exported, EXPERIMENT)
    records = read_runs(exported)
    for record in [r for r in records if r["tags"]["data_fingerprint"] == FINGERPRINT][:2]:
        record["tags"] = {**record["tags"], "cell": "-elsewhere", "run_key": "another-spec"}
    tracker = RunTracker(f"sqlite:///{tmp_path / 'c.db'}", EXPERIMENT)
    parent = open_parent(tracker, "components", "tiny", {"machine": "Machine C", "jobs": str(len(jobs))})
    count, refused = import_runs(tracker, parent, records, jobs, _prints(jobs), "x")
    assert count == 1   # of the 4 records: 2 re-labelled, 1 on other data
    assert refused[-1] == "2 runs are not jobs of this spec (other configurations; cells -elsewhere)"
    assert len(refused) == 2
