"""Render an ablation from MLflow into ``docs/ablations/<name>.md`` and a PNG, byte for byte the same for the same runs.

One row per cell: AUC and UAUC on test, test-warm and test-cold as mean ± 95% t-interval over seeds, the paired
difference to the full model with Holm-corrected p-values (:mod:`sellarec.ablation.stats`), trainable parameters
and compute seconds; published numbers (``ablations/published.yaml``) beside ours where the dataset matches; a
footer with the data fingerprint, label rule, metric definitions, backbone, profile, commit and commands. Nothing
in the body depends on the clock or on dict/set order.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

import pandas as pd

from sellarec.ablation.carryover import export_runs, runs_path
from sellarec.ablation.records import AblationRuns, load_ablation_runs
from sellarec.ablation.spec import FULL
from sellarec.ablation.stats import detectable_difference, pooled_sd, seeds_needed, summarize
from sellarec.ablation.tracking import EXPERIMENT
from sellarec.atomic_files import write_text_atomic
from sellarec.config import read_yaml
from sellarec.errors import ConfigError
from sellarec.metrics import COST_COMPUTE_SECONDS, COST_TRAINABLE_PARAMS, MIN_SLICE_ROWS, metric_key
from sellarec.runtime import repo_relative

__all__ = ["METRICS", "load_published", "render_markdown", "render_plot", "write_report"]

METRICS = tuple((metric_key(split, name), f"{label} {name.upper()}") for split, label in
                (("test", "test"), ("test_warm", "warm"), ("test_cold", "cold")) for name in ("auc", "uauc"))
ALPHA = 0.05
POWER = 0.8
TARGET_DIFFERENCE = 0.01  # the AUC difference researchers ask about: how many seeds would detect it
_RESULT_KEYS = {"source", "dataset", "method", "cell", "auc", "uauc"}


def load_published(path: Path) -> dict[str, Any]:
    """Read the published-numbers registry: ``sources`` (id -> citation, url, setup) and ``results``.

    Raises:
        ConfigError: a malformed file, an unknown key or a result citing an unknown source.
    """
    values = read_yaml(path, "published numbers") or {}
    sources, results = values.get("sources") or {}, values.get("results") or []
    if not isinstance(sources, dict) or not isinstance(results, list) or set(values) - {"sources", "results"}:
        raise ConfigError(f"published numbers file {path} must hold 'sources' (a mapping) and 'results' (a list)")
    for i, entry in enumerate(results):
        if not isinstance(entry, dict) or set(entry) - _RESULT_KEYS or entry.get("source") not in sources:
            raise ConfigError(f"published numbers file {path}: results[{i}] must have keys "
                              f"{', '.join(sorted(_RESULT_KEYS))} and cite a source listed under 'sources'")
    return {"sources": sources, "results": results}


def _num(value: float, digits: int = 4) -> str:
    return "n/a" if not math.isfinite(value) else f"{value + 0.0:.{digits}f}"


def _interval(row: pd.Series, runs: int | None = None) -> str:
    """``mean ± half``; ``(n=k)`` when only k of the cell's ``runs`` runs have a finite value (or k = 1)."""
    if row["n"] == 0:
        return "n/a"
    note = f" (n={row['n']})" if row["n"] == 1 or (runs is not None and row["n"] < runs) else ""
    if not math.isfinite(row["half_width"]):
        return f"{_num(row['mean'])}{note}"
    return f"{_num(row['mean'])} ± {_num(row['half_width'])}{note}"


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _difference(row: pd.Series) -> str:
    if row["n_pairs"] == 0:
        return "n/a"
    diff = f"{row['diff'] + 0.0:+.4f}"
    if not math.isfinite(row["p_holm"]):
        return f"{diff} (p n/a)"
    return f"{diff} (p={_p(row['p_holm'])}{'*' if row['p_holm'] < ALPHA else ''})"


def _slice_rows(runs: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Split (``test``, ``test_warm``, ...) -> the fewest and most rows one run scored on it."""
    found = {}
    for split in dict.fromkeys(m.split("/", 1)[0] for m, _ in METRICS):
        values = runs[f"{split}/rows"].dropna() if f"{split}/rows" in runs else pd.Series(dtype=float)
        if not values.empty:
            found[split] = (int(values.min()), int(values.max()))
    return found


def _rows_text(span: tuple[int, int]) -> str:
    return f"{span[0]:,}" if span[0] == span[1] else f"{span[0]:,}-{span[1]:,}"


def _too_small(rows: dict[str, tuple[int, int]]) -> dict[str, str]:
    """Metric -> ``n/a (3-7 rows)`` for the metrics of a slice below MIN_SLICE_ROWS rows on every run."""
    return {metric: f"n/a ({_rows_text(rows[split])} rows)" for metric, _ in METRICS
            if (split := metric.split("/", 1)[0]) in rows and rows[split][1] < MIN_SLICE_ROWS}


def _power_rows(cells: pd.DataFrame, small: dict[str, str]) -> list[list[str]]:
    """Per column: pooled paired spread, seeds, smallest detectable difference, seeds for TARGET_DIFFERENCE."""
    rows = []
    for metric, label in METRICS:
        if metric in small:
            rows.append([label, "n/a", "n/a", small[metric], "n/a"])
            continue
        sd, n = pooled_sd(cells, metric)
        if n < 2:
            rows.append([label, "n/a", "n/a", "n/a (fewer than 2 paired seeds)", "n/a"])
            continue
        needed = seeds_needed(TARGET_DIFFERENCE, sd, POWER, ALPHA)
        rows.append([label, _num(sd), str(n), _num(detectable_difference(sd, n, POWER, ALPHA)),
                     str(needed) if needed > 0 else "n/a"])
    return rows


def _text(value: Any) -> str:
    """Plain text safe inside a Markdown table cell (``<Warm_ID>`` would otherwise be read as an HTML tag)."""
    return str(value).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _distinct(frame: pd.DataFrame, column: str) -> str:
    values = sorted({str(v) for v in frame[column] if str(v) != ""}) if column in frame else []
    return ", ".join(f"`{v}`" for v in values) or "n/a"


def _cost(frame: pd.DataFrame, column: str, digits: int) -> str:
    values = frame[column].dropna() if column in frame else pd.Series(dtype=float)
    if values.empty:
        return "n/a"
    return f"{round(values.mean()):,}" if digits == 0 else f"{values.mean():,.{digits}f}"


def _published(study: AblationRuns, cells: pd.DataFrame, published: dict[str, Any]) -> list[str]:
    datasets = sorted({str(v) for v in study.runs["data.dataset"]})
    known = sorted({str(r["dataset"]) for r in published["results"]})
    matches = [r for r in published["results"] if str(r["dataset"]) in datasets]
    if not matches:
        return [f"No published numbers for {', '.join(datasets)} in `ablations/published.yaml` (it holds "
                f"{', '.join(known) or 'none'}), so none are shown."]
    ours = {(c, m): _interval(r) for (c, m), r in cells.set_index(["cell", "metric"]).iterrows()}
    rows = []
    for r in sorted(matches, key=lambda r: (str(r["dataset"]), str(r["source"]), str(r["method"]))):
        cell = r.get("cell") or ""
        rows.append([_text(r["dataset"]), _text(r["method"]), f"`{r['source']}`", _num(float(r["auc"])),
                     _num(float(r["uauc"])), f"`{cell}`" if cell else "",
                     ours.get((cell, "test/auc"), ""), ours.get((cell, "test/uauc"), "")])
    lines = _table(["dataset", "method", "source", "published AUC", "published UAUC", "our cell", "our test AUC",
                    "our test UAUC"], rows)
    lines += ["", "Sources (their setups differ from ours; read the footer before comparing):", ""]
    for source in sorted({str(r["source"]) for r in matches}):
        info = published["sources"][source]
        lines.append(f"* `{source}`: {info.get('citation', '')} <{info.get('url', '')}>. {info.get('setup', '')}")
    return lines


def _footer(study: AblationRuns, commands: list[str], runs_file: str) -> list[str]:
    runs, warm = study.runs, sorted({str(v) for v in study.runs["data.warm_definition"]})
    warm_text = {"sella": "warm = not cold (SeLLa)",
                 "collm": "warm = user and item each seen more than 3 times in train (CoLLM; rows seen 1-3 times are "
                          "neither warm nor cold)"}
    commits = sorted({str(v) for v in runs["git_commit"] if str(v)} | ({study.parent["git_commit"]}
                                                                       if study.parent.get("git_commit") else set()))
    return [
        "## How these numbers were made", "",
        f"* Data: {_distinct(runs, 'data.dataset')}, split rule {_distinct(runs, 'data.split')} (None: the "
        f"dataset's own), fingerprint {_distinct(runs, 'data_fingerprint')} (SHA-256 of the "
        "source files, the protocol version and the split and sampling settings); users kept: "
        + ("all" if _distinct(runs, "data.max_users") in ("`None`", "n/a") else
           f"{_distinct(runs, 'data.max_users')} (sample seed {_distinct(runs, 'data.sample_seed')})") + ".",
        f"* Label rule: {'; '.join(sorted({str(v) for v in runs['label_rule'] if str(v)})) or 'n/a'}.",
        "* UAUC: unweighted mean over users of the per-user ROC-AUC; users with one evaluation row or one label "
        "class are skipped (CoLLM's uAUC).",
        "* Warm/cold: cold = the user or the item is absent from the train split; "
        + "; ".join(warm_text.get(w, w) for w in warm) + ".",
        f"* Test rows: at most {_distinct(runs, 'eval.max_test_samples')} prompt-level rows drawn uniformly from the "
        "test split with the run's seed, so every cell at one seed scores the same rows (the pairing of the paired "
        f"test); scores: {_distinct(runs, 'eval.score_fn')}.",
        f"* Backbone: {_distinct(runs, 'backbone.name')}. Profile: `{study.profile}`. Commit: "
        + (", ".join(f"`{c}`" for c in commits) or "n/a") + ".",
        f"* Machine: {_machines(study)}.",
        f"* Per-run numbers (tags, params, final metrics): `{runs_file}`; another machine continues this ablation "
        f"from them with the run command plus `--import-runs {runs_file}`, which logs them into its store and runs "
        "only the jobs they lack.",
        "", "Commands:", "", "```bash", *commands, "```", ""]


def _machines(study: AblationRuns) -> str:
    """The machines behind the runs: the runner's (the parent's), and each machine imported runs came from."""
    runs = study.runs
    local = study.parent.get("machine") or "not recorded"
    imported = runs[runs["imported_from"].astype(str) != ""] if "imported_from" in runs else runs.iloc[:0]
    if imported.empty:
        return f"{local} (the runner's)"
    others = sorted({str(m) or "not recorded" for m in imported["machine"]})
    return (f"{local} (the runner's, {len(runs) - len(imported)} runs); imported runs ({len(imported)}): "
            + "; ".join(others))


def render_markdown(study: AblationRuns, published: dict[str, Any], png_name: str, report_command: str,
                    runs_file: str = "") -> str:
    """The report's Markdown (see the module docstring); deterministic for the same ``study``. ``runs_file``: the
    repository-relative path where the runs are published beside it."""
    runs = study.runs
    metrics = [m for m, _ in METRICS]
    for metric in metrics:
        if metric not in runs:
            runs = runs.assign(**{metric: math.nan})
    slice_rows = _slice_rows(runs)
    small = _too_small(slice_rows)
    runs = runs.assign(**{metric: math.nan for metric in small})   # out of means, differences, Holm and power
    cells = summarize(runs, metrics, reference=FULL)
    order = list(dict.fromkeys(runs["cell"]))
    by = {c: cells[cells["cell"] == c].set_index("metric") for c in order}
    first = runs.drop_duplicates("cell").set_index("cell")
    seeds = sorted(set(runs["seed"]))
    result_rows, diff_rows, about_rows = [], [], []
    for cell in order:
        frame = runs[runs["cell"] == cell]
        seeds_text = ",".join(str(s) for s in sorted(frame["seed"]))
        result_rows.append([f"`{cell}`", seeds_text]
                           + [small.get(m) or _interval(by[cell].loc[m], len(frame)) for m in metrics]
                           + [_cost(frame, COST_TRAINABLE_PARAMS, 0), _cost(frame, COST_COMPUTE_SECONDS, 1)])
        if cell != FULL:
            diff_rows.append([f"`{cell}`"] + [small.get(m) or _difference(by[cell].loc[m]) for m in metrics])
        about_rows.append([f"`{cell}`", _text(first.loc[cell, "kind"]), _text(first.loc[cell, "description"])])
    report_command = repo_relative(report_command)
    lines = [f"<!-- generated by `{report_command}` from MLflow; do not edit by hand -->",
             f"# Ablation `{study.ablation}` (profile `{study.profile}`)", ""]
    if study.parent.get("description"):
        lines += [_text(study.parent["description"]), ""]
    planned = int(study.parent.get("jobs") or 0)
    if planned > len(runs):
        lines += [f"**In progress: {len(runs)} of {planned} runs (cells x seeds) have finished**; cells and seeds "
                  "missing below have not run yet.", ""]
    lines += [f"{len(order)} cells, seeds {', '.join(map(str, seeds))}. Each value is the mean ± half-width of the "
              "95% t-interval over seeds; (n=k) marks a value over only k seeds (a slice without both labels has "
              "no AUC). Trainable parameters are the final stage's; compute seconds add every stage's own time, "
              "cached stages included.", "",
              "## Results", ""]
    lines += _table(["cell", "seeds"] + [label for _, label in METRICS] + ["trainable params", "compute s"],
                    result_rows)
    if slice_rows:
        lines += ["", "Rows scored per run: " + ", ".join(f"{split} {_rows_text(span)}"
                                                          for split, span in slice_rows.items())
                  + f". A slice under {MIN_SLICE_ROWS} rows on every run is not reported (n/a)."]
    lines += ["", f"![test AUC and UAUC per cell]({png_name})", "", "## Difference to the full model", "",
              "Mean paired difference (cell - `full`, paired by seed) and the two-sided paired t-test p-value, "
              f"Holm-corrected across the cells of each column; `*` marks p < {ALPHA}. With fewer than 2 paired "
              "seeds, or identical differences on every seed, there is no p-value.", ""]
    lines += _table(["cell"] + [f"Δ {label}" for _, label in METRICS], diff_rows) if diff_rows else ["No other cell."]
    if diff_rows:
        lines += ["", "## What these seeds can detect", "",
                  f"From the observed spread of the paired differences (standard deviation pooled over the cells of "
                  f"each column): the smallest true difference a paired t-test over these seeds detects with "
                  f"{POWER:.0%} power at {ALPHA:.0%} two-sided (before Holm's correction, which only raises it), and "
                  f"the seeds that would detect a {TARGET_DIFFERENCE} difference. A difference smaller than the "
                  "detectable one that is not significant is not evidence of no effect.", ""]
        lines += _table(["column", "paired SD", "seeds", "detectable difference", f"seeds for {TARGET_DIFFERENCE}"],
                        _power_rows(cells, small))
    lines += ["", "## Cells", ""] + _table(["cell", "kind", "what differs from the full model"], about_rows)
    lines += ["", "## Published numbers", ""] + _published(study, cells, published) + [""]
    run_command = repo_relative(study.parent.get("command", ""))
    commands = [c for c in (run_command, report_command) if c]
    if run_command and runs_file:   # a fresh clone has no store: it imports the published runs first
        commands += ["# from a fresh clone: log the published runs, run only the jobs they lack, then report",
                     f"{run_command} --import-runs {runs_file}", _report_after(run_command, study)]
    return "\n".join(lines + _footer(study, commands, runs_file))


def _report_after(run_command: str, study: AblationRuns) -> str:
    """The report command that reads the store ``run_command`` writes (its ``--tracking-uri``, else the default)."""
    words = shlex.split(run_command)
    shown = ["--smoke-test"] if "--smoke-test" in words else ["--spec", study.ablation, "--profile", study.profile]
    if "--tracking-uri" in words[:-1]:
        shown += ["--tracking-uri", words[words.index("--tracking-uri") + 1]]
    return " ".join(shlex.quote(w) for w in ["python", "ablations/report.py", *shown])


def render_plot(study: AblationRuns, path: Path) -> None:
    """Test AUC and UAUC per cell (mean ± 95% interval), the full model's mean dashed; a PNG without timestamps."""
    from matplotlib.figure import Figure

    cells = summarize(study.runs.assign(**{m: study.runs.get(m, math.nan) for m in ("test/auc", "test/uauc")}),
                      ["test/auc", "test/uauc"], reference=FULL)
    order = list(dict.fromkeys(study.runs["cell"]))
    fig = Figure(figsize=(10, 1.6 + 0.4 * len(order)))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (metric, label) in zip(axes, METRICS[:2]):
        rows = cells[cells["metric"] == metric].set_index("cell").loc[order]
        y = list(range(len(order)))
        ax.errorbar(rows["mean"], y, xerr=rows["half_width"].fillna(0.0), fmt="o", capsize=3, color="tab:blue")
        if FULL in rows.index and math.isfinite(rows.loc[FULL, "mean"]):
            ax.axvline(rows.loc[FULL, "mean"], linestyle="--", color="grey", linewidth=1)
        low, high = ax.get_xlim()
        ax.set_xlim(max(0.0, low), min(1.0, high))   # AUCs live in [0, 1]; wider t-intervals are cut at the edge
        ax.set_title(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(order)), order)
    axes[0].invert_yaxis()
    fig.suptitle(f"Ablation {study.ablation} ({study.profile}): mean ± 95% CI over seeds")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})


def write_report(tracking_uri: str, ablation: str, profile: str, out: Path, published_path: Path,
                 report_command: str, experiment: str = EXPERIMENT) -> tuple[Path, Path, Path]:
    """Read the ablation from MLflow and write ``out`` (Markdown), ``out`` with suffix ``.png`` and the runs behind
    them (:func:`~sellarec.ablation.carryover.runs_path`); returns the three paths.

    Raises:
        DataError: no such store, ablation or finished run.
        ConfigError: a malformed published-numbers file.
    """
    study = load_ablation_runs(tracking_uri, ablation, profile, experiment)
    published = load_published(published_path)
    out = Path(out)
    png, runs = out.with_suffix(".png"), runs_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    render_plot(study, png)
    export_runs(tracking_uri, ablation, profile, runs, experiment)
    write_text_atomic(out, render_markdown(study, published, png.name, report_command,
                                           repo_relative(str(runs.resolve()))))
    return out, png, runs
