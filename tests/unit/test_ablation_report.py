"""Ablation report from a hand-built MLflow store: numbers against hand-computed means, t-intervals, paired-test
p-values and Holm corrections; run selection (latest, finished, not superseded); determinism; published numbers;
and the runner's resume bookkeeping on the same store.

Expected values use closed forms of Student's t with 1 and 2 degrees of freedom, never the module under test:
df=1 (Cauchy): quantile q -> tan(pi (q - 1/2)), two-sided p = 1 - (2/pi) atan|t|;
df=2: quantile q -> (2q - 1) sqrt(2 / (1 - (2q - 1)^2)), two-sided p = 1 - |t| / sqrt(2 + t^2).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy import stats

from sellarec.ablation.report import METRICS, load_published, write_report
from sellarec.errors import ConfigError, DataError

PUBLISHED = Path(__file__).resolve().parents[2] / "ablations" / "published.yaml"
SEEDS = {"full": (0, 1, 2), "-x": (0, 1, 2), "-y": (0, 1, 2), "mf": (0, 1)}
KINDS = {"full": "full", "-x": "ablation", "-y": "ablation", "mf": "baseline"}
PARAMS = {"full": 1000, "-x": 900, "-y": 1100}
NAMES = [m for m, _ in METRICS]


def _values() -> dict[tuple[str, int, str], float]:
    rng = np.random.default_rng(7)
    values = {(c, s, m): round(float(rng.uniform(0.5, 0.8)), 3) for c in SEEDS for s in SEEDS[c] for m in NAMES}
    values["-y", 2, "test_warm/auc"] = math.nan          # a slice with one label class
    for seed, (worse, better) in enumerate([(0.050, 0.020), (0.052, 0.030), (0.049, 0.025)]):
        values["-x", seed, "test/auc"] = values["full", seed, "test/auc"] - worse      # p < 0.001 after Holm
        values["-y", seed, "test/uauc"] = values["full", seed, "test/uauc"] + better   # 0.001 < p < 0.05
    return values


def _run(client: MlflowClient, exp: str, parent: str, cell: str, seed: int, metrics: dict[str, float], *,
         start: int, status: str = "FINISHED", dataset: str = "ml100k", **extra_tags: str) -> None:
    tags = {"mlflow.parentRunId": parent, "cell": cell, "seed": str(seed), "cell_kind": KINDS.get(cell, "ablation"),
            "cell_index": str(list(SEEDS).index(cell) if cell in SEEDS else 99), "description": f"about {cell}",
            "data_fingerprint": "abc123", "label_rule": "rating >= 4 is positive", "git_commit": "deadbeef",
            **extra_tags}
    run_id = client.create_run(exp, start_time=start, tags=tags).info.run_id
    params = {"data.dataset": dataset, "data.max_users": "300", "data.sample_seed": "0",
              "data.warm_definition": "sella", "backbone.name": "smollm2-135m", "eval.max_test_samples": "200",
              "data.split": "user_time", "eval.score_fn": "two_way_softmax", "final_stage": "stage3"}
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
    client.set_terminated(run_id, status)


def _ablation(client: MlflowClient, exp: str, name: str, dataset: str) -> None:
    """Parent + children: the current runs, and runs the report must ignore."""
    old = client.create_run(exp, start_time=1, tags={"ablation": name, "profile": "quick", "role": "parent"})
    _run(client, exp, old.info.run_id, "full", 0, {"test/auc": 0.01}, start=2)          # an older parent's child
    parent = client.create_run(exp, start_time=10, tags={
        "ablation": name, "profile": "quick", "role": "parent", "description": "A toy <ablation>.",
        "command": f"python ablations/run.py --spec {name}", "git_commit": "deadbeef",
        "machine": "Toy CPU, 2 cores"}).info.run_id
    values = _values()
    for cell, seeds in SEEDS.items():
        for seed in seeds:
            metrics = {m: values[cell, seed, m] for m in NAMES}
            metrics["compute_seconds"] = 10.0 * (seed + 1)
            if cell in PARAMS:
                metrics["trainable_params"] = PARAMS[cell]
            _run(client, exp, parent, cell, seed, metrics, start=1000 + seed, dataset=dataset)
    _run(client, exp, parent, "full", 0, {"test/auc": 0.02}, start=500, dataset=dataset)          # older duplicate
    _run(client, exp, parent, "-x", 1, {"test/auc": 0.99}, start=5000, status="FAILED", dataset=dataset)
    _run(client, exp, parent, "-y", 0, {"test/auc": 0.99}, start=5000, dataset=dataset, superseded="true")
    _run(client, exp, parent, "gone", 0, {"test/auc": 0.99}, start=900, status="RUNNING", dataset=dataset)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("ablations")
    _ablation(client, exp, "toy", "ml100k")
    _ablation(client, exp, "toy1m", "ml1m")
    return uri


def _t_quantile(df: int, q: float = 0.975) -> float:
    return math.tan(math.pi * (q - 0.5)) if df == 1 else (2 * q - 1) * math.sqrt(2 / (1 - (2 * q - 1) ** 2))


def _two_sided_p(t: float, df: int) -> float:
    return 1 - 2 / math.pi * math.atan(abs(t)) if df == 1 else 1 - abs(t) / math.sqrt(2 + t * t)


def _sd(x: list[float]) -> float:
    mean = sum(x) / len(x)
    return math.sqrt(sum((v - mean) ** 2 for v in x) / (len(x) - 1))


def _expected(metric: str) -> tuple[dict[str, str], dict[str, str]]:
    """Hand-computed 'mean ± half' and 'diff (p=...)' strings per cell."""
    values = _values()
    series = {c: {s: values[c, s, metric] for s in SEEDS[c] if not math.isnan(values[c, s, metric])} for c in SEEDS}
    intervals, diffs, pvals = {}, {}, {}
    for cell, xs in series.items():
        x = list(xs.values())
        half = _t_quantile(len(x) - 1) * _sd(x) / math.sqrt(len(x))
        note = f" (n={len(x)})" if len(x) < len(SEEDS[cell]) else ""
        intervals[cell] = f"{sum(x) / len(x):.4f} ± {half:.4f}{note}"
        if cell != "full":
            d = [xs[s] - series["full"][s] for s in sorted(set(xs) & set(series["full"]))]
            diffs[cell] = sum(d) / len(d)
            pvals[cell] = _two_sided_p(diffs[cell] / (_sd(d) / math.sqrt(len(d))), len(d) - 1)
    ranked = sorted(pvals, key=pvals.get)                                  # Holm: step down from the smallest p
    adjusted, running = {}, 0.0
    for j, cell in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - j) * pvals[cell]))
        adjusted[cell] = running
    texts = {c: f"{diffs[c]:+.4f} (p={'<0.001' if adjusted[c] < 0.001 else f'{adjusted[c]:.3f}'}"
                f"{'*' if adjusted[c] < 0.05 else ''})" for c in diffs}
    return intervals, texts


def _rows(markdown: str, section: str) -> dict[str, list[str]]:
    block = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {line.split(" | ")[0][3:-1]: [c.strip() for c in line.strip("|").split(" | ")[1:]]
            for line in block.splitlines() if line.startswith("| `")}


@pytest.fixture(scope="module")
def report(store: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("report") / "toy.md"
    write_report(store, "toy", "quick", out, PUBLISHED, "python ablations/report.py --spec toy")
    return out.read_text(encoding="utf-8"), out


@pytest.mark.parametrize("metric", NAMES)
def test_intervals_and_holm_corrected_paired_tests(report, metric: str) -> None:
    markdown, _ = report
    column = NAMES.index(metric)
    intervals, diffs = _expected(metric)
    results, differences = _rows(markdown, "Results"), _rows(markdown, "Difference to the full model")
    assert list(results) == ["full", "-x", "-y", "mf"]
    for cell in SEEDS:
        assert results[cell][1 + column] == intervals[cell], cell
    for cell in ("-x", "-y", "mf"):
        assert differences[cell][column] == diffs[cell], cell
    if metric == "test/auc":
        assert differences["-x"][column].endswith("(p=<0.001*)")
    if metric == "test/uauc":
        assert differences["-y"][column].endswith("*)") and "<0.001" not in differences["-y"][column]
    if metric == "test_warm/auc":
        assert results["-y"][1 + column].endswith("(n=2)")


def test_run_selection_costs_and_footer(report) -> None:
    markdown, _ = report
    results = _rows(markdown, "Results")
    assert [results[c][0] for c in SEEDS] == ["0,1,2", "0,1,2", "0,1,2", "0,1"]    # dedupe, FAILED, superseded
    assert [results[c][-2] for c in SEEDS] == ["1,000", "900", "1,100", "n/a"]
    assert [results[c][-1] for c in SEEDS] == ["20.0", "20.0", "20.0", "15.0"]      # mean of 10 (s+1) seconds
    assert "gone" not in markdown                                                   # RUNNING runs never count
    assert "A toy &lt;ablation&gt;." in markdown
    assert "fingerprint `abc123`" in markdown and "rating >= 4 is positive" in markdown
    assert "Commit: `deadbeef`" in markdown and "Backbone: `smollm2-135m`" in markdown
    assert "Machine: Toy CPU, 2 cores (the runner's)." in markdown
    assert "python ablations/run.py --spec toy\npython ablations/report.py --spec toy\n" in markdown
    assert "No published numbers for ml100k" in markdown


def test_same_runs_same_bytes(store: str, report, tmp_path: Path) -> None:
    markdown, first = report
    again = tmp_path / "again" / "toy.md"
    write_report(store, "toy", "quick", again, PUBLISHED, "python ablations/report.py --spec toy")
    # the same bytes but for where the report lies (the runs file beside it is named in the footer)
    assert again.read_text().replace(str(again.parent), str(first.parent)) == first.read_text()
    assert again.with_suffix(".runs.jsonl").read_bytes() == first.with_suffix(".runs.jsonl").read_bytes()
    assert again.with_suffix(".png").read_bytes() == first.with_suffix(".png").read_bytes()
    assert first.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_commands_shown_relative_to_the_checkout(store: str, tmp_path: Path) -> None:
    """A store given by absolute path inside the checkout is shown as the fresh-clone command would name it."""
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "toy.md"
    write_report(store, "toy", "quick", out, PUBLISHED,
                 f"python ablations/report.py --spec toy --tracking-uri sqlite:///{root}/runs/x.db --out /elsewhere/t.md")
    markdown = out.read_text(encoding="utf-8")
    shown = "python ablations/report.py --spec toy --tracking-uri sqlite:///runs/x.db --out /elsewhere/t.md"
    assert markdown.startswith(f"<!-- generated by `{shown}` from MLflow")
    commands = markdown.split("Commands:", 1)[1]
    assert f"\n{shown}\n" in commands and str(root) not in markdown


def test_published_numbers_beside_ours_where_the_dataset_matches(store: str, tmp_path: Path) -> None:
    out = tmp_path / "toy1m.md"
    write_report(store, "toy1m", "quick", out, PUBLISHED, "python ablations/report.py --spec toy1m")
    markdown = out.read_text(encoding="utf-8")
    intervals, _ = _expected("test/auc")
    row = next(line for line in markdown.splitlines() if line.startswith("| ml1m | MF | `collm-v3-table2`"))
    assert row.split(" | ")[3:7] == ["0.6482", "0.6361", "`mf`", intervals["mf"]]
    assert "amazon-book" not in markdown.split("## Published numbers", 1)[1].split("## How", 1)[0]
    assert "arxiv.org/html/2310.19488v3" in markdown


def test_missing_ablation_and_bad_registry(store: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no ablation 'nope' on profile 'quick' in sqlite:///.*; run `python "):
        write_report(store, "nope", "quick", tmp_path / "x.md", PUBLISHED, "cmd")
    with pytest.raises(DataError, match=r"MLflow store sqlite:///.*missing.db does not exist"):
        write_report(f"sqlite:///{tmp_path / 'missing.db'}", "toy", "quick", tmp_path / "x.md", PUBLISHED, "cmd")
    bad = tmp_path / "published.yaml"
    bad.write_text("sources: {a: {citation: x}}\nresults: [{source: b, dataset: ml1m, method: MF, auc: 1, uauc: 1}]\n")
    with pytest.raises(ConfigError, match=r"results\[0\] must have keys .* and cite a source listed"):
        load_published(bad)
    assert not (tmp_path / "x.md").exists()


def test_resume_bookkeeping_skips_finished_and_supersedes_stale(store: str) -> None:
    from sellarec.ablation.expansion import expand_cells, expand_jobs
    from sellarec.ablation.runner import _sync_children
    from sellarec.ablation.spec import parse_spec
    from sellarec.ablation.tracking import open_parent
    from sellarec.experiment.tracking import RunTracker

    spec = parse_spec({"profile": "tiny", "components": {"a": {"set": {"stage3.lr": 0.5}}}}, "sync")
    jobs = expand_jobs(expand_cells(spec), (0, 1))
    key = {(j.cell.name, j.seed): j.run_key for j in jobs}
    tracker = RunTracker(store, "ablations")
    client, exp = tracker.client, tracker.experiment_id
    parent = open_parent(tracker, "sync", "tiny", {"command": "c"})
    assert open_parent(tracker, "sync", "tiny", {"command": "c2"}) == parent          # resumed, not new
    made = {}
    for cell, seed, run_key, status, extra in [("full", 0, key["full", 0], "FINISHED", {"superseded": "true"}),
                                               ("full", 1, "old-key", "FINISHED", {}),
                                               ("gone", 0, "k", "FINISHED", {}),
                                               ("-a", 0, key["-a", 0], "RUNNING", {}),
                                               ("-a", 1, key["-a", 1], "FAILED", {})]:
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "cell": cell, "seed": str(seed),
                                           "run_key": run_key, **extra})
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
        made[cell, seed] = run.info.run_id
    pending = _sync_children(tracker, parent, jobs)
    assert [(j.cell.name, j.seed) for j in pending] == [("full", 1), ("-a", 0), ("-a", 1)]
    tags = {k: client.get_run(r).data.tags.get("superseded") for k, r in made.items()}
    assert tags == {("full", 0): None, ("full", 1): "true", ("gone", 0): "true", ("-a", 0): None, ("-a", 1): None}
    assert client.get_run(made["-a", 0]).info.status == "KILLED"
    assert client.get_run(parent).data.tags["command"] == "c2"


def test_power_table_from_the_pooled_paired_spread(report) -> None:
    markdown, _ = report
    block = markdown.split("## What these seeds can detect\n", 1)[1].split("\n## ", 1)[0]
    rows = {line.split(" | ")[0][2:]: [c.strip() for c in line.strip("|").split(" | ")[1:]]
            for line in block.splitlines() if line.startswith("| ") and "---" not in line}
    values = _values()
    for metric, label in METRICS:
        squares, dof, pairs = 0.0, 0, []
        for cell in ("-x", "-y", "mf"):
            d = [values[cell, s, metric] - values["full", s, metric] for s in SEEDS[cell]
                 if not math.isnan(values[cell, s, metric])]
            squares, dof, pairs = squares + (len(d) - 1) * _sd(d) ** 2, dof + len(d) - 1, pairs + [len(d)]
        sd = math.sqrt(squares / dof)
        assert rows[label][0] == f"{sd:.4f}", label
        assert rows[label][1] == str(int(np.median(pairs))), label
        # The printed difference has 80 % power: closed-form df-2 critical value, scipy's noncentral t.
        n, delta = int(np.median(pairs)), float(rows[label][2])
        critical = _t_quantile(n - 1)
        power = stats.nct.sf(critical, n - 1, delta * math.sqrt(n) / sd) + stats.nct.cdf(-critical, n - 1,
                                                                                         delta * math.sqrt(n) / sd)
        assert power == pytest.approx(0.8, abs=2e-3), label  # the 4-decimal rounding of delta moves power a little


def test_a_slice_of_a_few_rows_is_not_reported(tmp_path: Path) -> None:
    # Cold slices of 3-5 rows per run (ML-100K's per-user split): their AUCs are noise and must not enter the
    # tables; the test slice's numbers are unchanged by that.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("ablations")
    parent = client.create_run(exp, start_time=10, tags={"ablation": "few", "profile": "quick", "role": "parent"})
    test_auc = {("full", 0): 0.70, ("full", 1): 0.74, ("-x", 0): 0.66, ("-x", 1): 0.69}
    for (cell, seed), auc in test_auc.items():
        metrics = {"test/auc": auc, "test/rows": 200, "test_warm/rows": 197 - seed, "test_cold/rows": 3 + 2 * seed,
                   "test_cold/auc": 1.0 - seed, "test_warm/auc": auc}
        _run(client, exp, parent.info.run_id, cell, seed, metrics, start=100 + seed)
    out = tmp_path / "few.md"
    write_report(uri, "few", "quick", out, PUBLISHED, "python ablations/report.py --spec few")
    markdown = out.read_text(encoding="utf-8")
    results, diffs = _rows(markdown, "Results"), _rows(markdown, "Difference to the full model")
    cold = [i for i, (m, _) in enumerate(METRICS) if m == "test_cold/auc"][0] + 1
    assert results["full"][cold] == results["-x"][cold] == "n/a (3-5 rows)"
    assert diffs["-x"][cold - 1] == "n/a (3-5 rows)"
    assert results["full"][1] == f"0.7200 ± {_t_quantile(1) * _sd([0.70, 0.74]) / math.sqrt(2):.4f}"
    assert "Rows scored per run: test 200, test_warm 196-197, test_cold 3-5." in markdown
    power = markdown.split("## What these seeds can detect\n", 1)[1].split("\n## ", 1)[0]
    assert "| cold AUC | n/a | n/a | n/a (3-5 rows) | n/a |" in power
