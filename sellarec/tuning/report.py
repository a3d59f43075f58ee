"""The end-of-sweep report: top-k table (terminal and markdown), Optuna parameter importances, a PNG plot and
Optuna's search plots (:mod:`~sellarec.tuning.search_plots`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sellarec.experiment.labels import short_keys
from sellarec.experiment.tracking import choice_key
from sellarec.metrics import metric_key
from sellarec.tuning.search_plots import write_search_plots

__all__ = ["TrialRow", "rows_from_runs", "rank_rows", "format_table", "train_command", "param_importances",
           "write_report", "winner", "verdict", "resolution", "IMPORTANCE_METHODS", "MIN_IMPORTANCE_TRIALS"]

IMPORTANCE_METHODS = ("PED-ANOVA", "fANOVA")
# Importances fitted to fewer finished trials rank noise (a forest on a handful of TPE-biased points); issue 11.
MIN_IMPORTANCE_TRIALS = 8
_TABLE_METRICS = (metric_key("valid", "auc"), metric_key("valid", "uauc"), metric_key("test", "auc"),
                  metric_key("test", "uauc"), metric_key("test_warm", "auc"), metric_key("test_cold", "auc"))


@dataclass
class TrialRow:
    """One trial's outcome.

    Attributes:
        trial_id: Tune's trial id.
        status: 'finished' (ran to the end), 'stopped' (by the scheduler), 'failed' or 'unfinished'.
        params: the trial's searched parameters (dotted path -> value).
        metrics: its last reported numbers (``valid/auc``, ...).
        error: the failure's reason, if any.
        index: position in start order.
        run_id: its MLflow run (what ``predict --mlflow-run`` and ``export --mlflow-run`` take).
    """

    trial_id: str
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    index: int = 0
    run_id: str = ""


def rows_from_runs(runs: list[Any], space: Any) -> list[TrialRow]:
    """One :class:`TrialRow` per trial child run of a sweep (MLflow, the one record of a sweep), in start order.

    A run's searched params are the keys its ``varied`` tag names (a conditional parameter a trial did not draw is
    not searched there), typed back through the space; its status comes from the run's: FINISHED -> finished,
    KILLED by the scheduler (tag ``stopped_by``) -> stopped, FAILED -> failed, anything else -> unfinished.
    """
    from sellarec.metrics import current_names

    by_key = {p.key: p for p in space.params}
    rows = []
    for index, run in enumerate(sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))):
        tags, logged = run.data.tags, run.data.params
        varied = set(tags["varied"].split(",")) if "varied" in tags else set(logged)
        params = {k: spec.parse(logged[k]) for k, spec in by_key.items() if k in varied and k in logged}
        status = {"FINISHED": "finished", "FAILED": "failed"}.get(run.info.status, "unfinished")
        if run.info.status == "KILLED" and tags.get("stopped_by") == "scheduler":
            status = "stopped"
        rows.append(TrialRow(tags.get("trial_id", run.info.run_id), status, params,
                             current_names(dict(run.data.metrics)), tags.get("error", "")[:300], index,
                             run.info.run_id))
    return rows


def train_command(profile: str | None, preset: str | None, config_file: str | None, overrides: list[str],
                  params: dict[str, Any], out: str | None = None) -> str:
    """The ``python -m sellarec train`` command that trains one configuration of the sweep (into ``out``, else
    train's default folder)."""
    parts = ["python -m sellarec train", f"--profile {profile}"] + ([f"--preset {preset}"] if preset else [])
    parts += [f"--config {config_file}"] if config_file else []
    parts += [f"--set '{o}'" for o in overrides]
    for key, value in params.items():
        if isinstance(value, (list, tuple)):
            shown = "[" + ",".join(map(str, value)) + "]"
        else:
            shown = str(value).lower() if isinstance(value, bool) else str(value)
        parts.append(f"--set {key}={shown}")
    parts += [f"--out {out}"] if out else []
    return " \\\n  ".join(parts)


def _score(row: TrialRow, metric: str, mode: str) -> float:
    value = row.metrics.get(metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return -math.inf
    return value if mode == "max" else -value


def rank_rows(rows: list[TrialRow], metric: str, mode: str) -> list[TrialRow]:
    """Finished trials best first, then stopped ones (by their last value), then failed/unfinished ones."""
    order = {"finished": 0, "stopped": 1, "unfinished": 2, "failed": 3}
    return sorted(rows, key=lambda r: (order.get(r.status, 9), -_score(r, metric, mode), r.trial_id))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan"
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.3g}"
    return str(choice_key(value))


def _with_interval(row: TrialRow, metric: str) -> str:
    """``0.7123 [0.6612, 0.7598] n=400``: the value, its 95 % CI and its rows where the trial reported them."""
    value = _cell(row.metrics.get(metric))
    interval = _interval(row, metric)
    if interval is not None:
        value += f" [{interval[0]:.4f}, {interval[1]:.4f}]"
    split = metric.split("/", 1)[0]
    n = row.metrics.get(f"{split}/rows")
    if isinstance(n, (int, float)) and math.isfinite(n):
        value += f" n={int(n)}"
    return value


def _interval(row: TrialRow, metric: str) -> tuple[float, float] | None:
    low, high = row.metrics.get(f"{metric}_ci_low"), row.metrics.get(f"{metric}_ci_high")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and math.isfinite(low) and math.isfinite(high):
        return float(low), float(high)
    return None


def winner(rows: list[TrialRow], metric: str, mode: str) -> TrialRow | None:
    """The top finished trial if its 95 % interval clears the runner-up's (lies wholly above it for ``max``, below for
    ``min``); None when fewer than two trials finished, an interval is missing, or the two intervals overlap.

    ``rows`` must be ranked (:func:`rank_rows`). Separated intervals are a conservative test of a difference;
    overlapping ones do not prove equality, only that this sweep cannot order the two.
    """
    finished = [r for r in rows if r.status == "finished"]
    if len(finished) < 2:
        return None
    top, runner_up = _interval(finished[0], metric), _interval(finished[1], metric)
    if top is None or runner_up is None:
        return None
    return finished[0] if (top[0] > runner_up[1] if mode == "max" else top[1] < runner_up[0]) else None


def resolution(rows: list[TrialRow], metric: str) -> list[str]:
    """The sweep's power line: how far apart two trials must score before the interval rule can order them.

    Two intervals of half-width h are disjoint only when their centres differ by more than 2h, so the top finished
    trial's half-width sets the smallest difference this sweep can resolve; h shrinks as 1/sqrt(rows), so halving it
    takes four times the rows.
    """
    finished = [r for r in rows if r.status == "finished"]
    interval = _interval(finished[0], metric) if finished else None
    rows_n = finished[0].metrics.get(f"{metric.split('/', 1)[0]}/rows") if finished else None
    if interval is None or not isinstance(rows_n, (int, float)) or not math.isfinite(rows_n):
        return []
    half = (interval[1] - interval[0]) / 2
    return [f"Resolution: the top trial's interval is ±{half:.4f} on {int(rows_n):,} rows, so two trials are ordered "
            f"only when they differ by more than about {2 * half:.4f}; smaller differences are invisible to this "
            f"sweep. Halving that takes about {4 * int(rows_n):,} rows."]


def verdict(rows: list[TrialRow], metric: str, mode: str) -> list[str]:
    """Markdown lines that name the best configuration only when :func:`winner` finds one, and otherwise list the
    trials the top one cannot be told from, with their intervals."""
    finished = [r for r in rows if r.status == "finished"]
    if not finished:
        return ["No trial finished."]
    best = winner(rows, metric, mode)
    if best is not None:
        return [f"Trial `{best.trial_id}`: {metric} = {_with_interval(best, metric)} (95 % user-bootstrap interval, "
                f"rows). Its interval clears the runner-up's (`{finished[1].trial_id}`: "
                f"{_with_interval(finished[1], metric)}), so this sweep tells it apart from every other finished "
                "trial."]
    if len(finished) == 1:
        lines = [f"No best configuration: only trial `{finished[0].trial_id}` finished "
                 f"({metric} = {_with_interval(finished[0], metric)}), so the sweep compared nothing."]
    else:
        top = _interval(finished[0], metric)
        tied = [r for r in finished if top is None or (i := _interval(r, metric)) is None
                or (i[1] >= top[0] if mode == "max" else i[0] <= top[1])]
        lines = [f"No best configuration: the top trial's 95 % interval does not clear the runner-up's, so this sweep "
                 f"cannot order them. These {len(tied)} finished trials have intervals that overlap the top one's "
                 "(or no interval):", ""]
        lines += [f"* `{r.trial_id}`: {metric} = {_with_interval(r, metric)}" for r in tied]
        if len(tied) < len(finished):
            lines += ["", f"The other {len(finished) - len(tied)} finished trials lie wholly "
                      f"{'below' if mode == 'max' else 'above'} the top trial's interval."]
    return lines + ["", f"The highest point estimate is trial `{finished[0].trial_id}`: a candidate, not a winner."]


def format_table(rows: list[TrialRow], keys: list[str], metric: str, *, markdown: bool,
                 incumbent: str | None = None) -> str:
    """The table of ``rows`` (already ranked): rank, trial, status, metrics (AUCs with their CI and rows where
    reported; test columns only where a trial evaluated test), searched parameters; ``incumbent`` (a trial id) is
    marked as the base configuration's own setting."""
    metrics = [metric] + [m for m in _TABLE_METRICS if m != metric
                          and (not m.startswith("test") or any(m in r.metrics for r in rows))]
    names = short_keys(keys)
    header = ["rank", "trial", "status", *metrics, *(names[k] for k in keys)]
    body = [[str(i + 1), r.trial_id + (" (incumbent)" if r.trial_id == incumbent else ""), r.status,
             *(_with_interval(r, m) for m in metrics),
             *(_cell(r.params.get(k)) for k in keys)] for i, r in enumerate(rows)]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(header[i]), *(len(row[i]) for row in body)) if body else len(header[i])
              for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*row) for row in body])


def param_importances(storage_url: str, study_name: str) -> dict[str, dict[str, float] | str]:
    """PED-ANOVA and fANOVA importances of the sweep's Optuna study (normalised to sum 1).

    Returns:
        method -> {param: importance}, or a one-line reason why it could not be computed (too few trials, ...).
        Only parameters present in every finished trial take part (conditional ones are left out by Optuna).
    """
    import warnings

    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    evaluators = {"PED-ANOVA": PedAnovaImportanceEvaluator(), "fANOVA": FanovaImportanceEvaluator(seed=0)}
    if len(finished) < MIN_IMPORTANCE_TRIALS:
        return {name: f"n/a: needs at least {MIN_IMPORTANCE_TRIALS} finished trials, has {len(finished)}"
                for name in evaluators}
    out: dict[str, dict[str, float] | str] = {}
    for name, evaluator in evaluators.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = {k: float(v) for k, v in get_param_importances(study, evaluator=evaluator).items()}
        except Exception as exc:  # noqa: BLE001 - importances are an add-on: the report is written regardless
            out[name] = f"n/a: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
    return out


def _importance_table(importances: dict[str, dict[str, float] | str], keys: list[str]) -> str:
    ok = {m: v for m, v in importances.items() if isinstance(v, dict)}
    notes = [f"* {m}: {v}" for m, v in importances.items() if isinstance(v, str)]
    lines = []
    if ok:
        params = [k for k in keys if any(k in v for v in ok.values())]
        lines += ["| parameter | " + " | ".join(ok) + " |", "|---|" + "---|" * len(ok)]
        lines += [f"| {k} | " + " | ".join(f"{v[k]:.3f}" if k in v else "-" for v in ok.values()) + " |"
                  for k in params]
        left_out = [k for k in keys if k not in params]
        if left_out:
            notes.append("* not in every finished trial (conditional), so left out: " + ", ".join(left_out))
    return "\n".join(lines + ([""] if lines and notes else []) + notes)


def _plot(path: Path, rows: list[TrialRow], metric: str, mode: str,
          importances: dict[str, dict[str, float] | str], keys: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r.index)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    marks = {"finished": ("o", "tab:blue"), "stopped": ("x", "tab:gray"), "failed": ("v", "tab:red")}
    for status, (marker, color) in marks.items():
        pts = [(i, r.metrics.get(metric)) for i, r in enumerate(rows)
               if r.status == status and isinstance(r.metrics.get(metric), (int, float))]
        if pts:
            left.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=status)
    values = [r.metrics.get(metric) if r.status == "finished" else None for r in rows]
    best, curve = None, []
    for value in values:
        if isinstance(value, (int, float)) and math.isfinite(value):
            best = value if best is None else (max(best, value) if mode == "max" else min(best, value))
        curve.append(best)
    if any(c is not None for c in curve):
        left.step(range(len(curve)), [math.nan if c is None else c for c in curve], where="post",
                  color="tab:green", label="best so far")
    left.set(xlabel="trial (in start order)", ylabel=metric, title=f"{metric} per trial")
    left.xaxis.get_major_locator().set_params(integer=True)
    if left.get_legend_handles_labels()[0]:
        left.legend(loc="best", fontsize=8)
    ok = {m: v for m, v in importances.items() if isinstance(v, dict) and v}
    if ok:
        params = sorted({k for v in ok.values() for k in v})
        names = short_keys([*keys, *params])   # the names of the report's table and the trials' MLflow runs
        width = 0.8 / len(ok)
        for j, (method, imp) in enumerate(ok.items()):
            right.barh([i + j * width for i in range(len(params))], [imp.get(k, 0.0) for k in params],
                       height=width, label=method)
        right.set_yticks([i + width * (len(ok) - 1) / 2 for i in range(len(params))], [names[k] for k in params],
                         fontsize=8)
        right.legend(loc="best", fontsize=8)
    else:
        right.text(0.5, 0.5, "importances n/a\n(too few finished trials)", ha="center", va="center")
        right.set_axis_off()
    right.set_title("parameter importance")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def write_report(md_path: Path, rows: list[TrialRow], keys: list[str], metric: str, mode: str,
                 importances: dict[str, dict[str, float] | str], header: list[str], best_command: str,
                 footer: list[str], top_k: int, incumbent: str | None = None, study_storage: str | None = None,
                 study_name: str | None = None) -> list[Path]:
    """Write ``<name>.md`` and ``<name>.png`` (same folder), and with the sweep's Optuna study its search plots
    ``<name>-history.png`` and ``<name>-parallel.png`` (:func:`~sellarec.tuning.search_plots.write_search_plots`).

    Args:
        md_path: the markdown file.
        rows: every trial, ranked (:func:`rank_rows`).
        keys: the searched dotted paths.
        metric: the sweep's metric.
        mode: 'max' or 'min'.
        importances: from :func:`param_importances`.
        header: bullet lines describing the sweep (space, profile, sampler, ...).
        best_command: the command that trains the best configuration.
        footer: bullet lines on where to look further (MLflow, optuna-dashboard, resume).
        top_k: rows in the table.
        incumbent: id of the trial that ran the base configuration's own setting (space ``incumbent: true``).
        study_storage: the Optuna study's storage URL; None: no search plots (and no section for them).
        study_name: the study's name (the sweep's).

    Returns:
        The PNGs written, ``<name>.png`` first.
    """
    md_path.parent.mkdir(parents=True, exist_ok=True)
    png = md_path.with_suffix(".png")
    _plot(png, rows, metric, mode, importances, keys)
    searched: list[Path] = []
    search_lines: list[str] = []
    if study_storage is not None and study_name is not None:
        searched, search_lines = write_search_plots(md_path, study_storage, study_name, metric, keys)
    parts = [f"# Sweep `{md_path.stem}`", "", *[f"* {line}" for line in header], ""]
    parts += ["## Best configuration", "", *verdict(rows, metric, mode), ""]
    if power := resolution(rows, metric):
        parts += [*power, ""]
    if any(r.status == "finished" for r in rows):
        parts += ["The commands below retrain the top-ranked trial from the stage cache, evaluate it on test and "
                  "export it as a bundle that `python -m sellarec predict --bundle` scores with (README: Score with a "
                  "trained model); on the machine that ran the sweep, the last two score with the trial as it is "
                  "and export it, without retraining:", "",
                  "```bash", best_command, "```", ""]
    if incumbent is not None:
        row = next(r for r in rows if r.trial_id == incumbent)
        parts += [f"The incumbent, trial `{incumbent}`, ran the base configuration's own setting: {metric} = "
                  f"{_with_interval(row, metric)}, rank {rows.index(row) + 1} of {len(rows)}.", ""]
    parts += [f"## Top {min(top_k, len(rows))} of {len(rows)} trials", "",
              format_table(rows[:top_k], keys, metric, markdown=True, incumbent=incumbent), ""]
    names = short_keys(keys)
    if any(names[k] != k for k in keys):
        parts += ["Parameter columns: " + ", ".join(f"`{names[k]}` = `{k}`" for k in keys if names[k] != k) + ".",
                  ""]
    failed = [r for r in rows if r.status == "failed"]
    if failed:
        parts += ["Failed trials:", "", *[f"* `{r.trial_id}`: {r.error}" for r in failed], ""]
    parts += ["## Parameter importances", "",
              "Optuna's PED-ANOVA (importance for reaching the top 10%) and fANOVA (random-forest variance "
              "decomposition) on the finished trials, computed only from "
              f"{MIN_IMPORTANCE_TRIALS} finished trials on. Even then a TPE-biased sample makes both rough and local.",
              "", _importance_table(importances, keys), "", f"![{metric} per trial and importances]({png.name})", ""]
    parts += [*search_lines, "## Where to look further", "", *[f"* {line}" for line in footer], ""]
    md_path.write_text("\n".join(parts), encoding="utf-8")
    return [png, *searched]
