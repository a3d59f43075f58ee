"""Optuna's own plots of a sweep's study, written beside its report: the optimisation history (the metric of each
finished trial and the best so far) and the parallel coordinates of the searched parameters against the metric."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sellarec.experiment.labels import short_keys

__all__ = ["write_search_plots", "search_plot_paths", "MIN_PLOT_TRIALS"]

# One finished trial has no history and no spread across a parameter's axis to draw.
MIN_PLOT_TRIALS = 2
_DPI = 110   # as the report's own plot


def search_plot_paths(md_path: Path) -> tuple[Path, Path]:
    """``<name>-history.png`` and ``<name>-parallel.png`` beside the report ``<name>.md``."""
    return (md_path.with_name(f"{md_path.stem}-history.png"), md_path.with_name(f"{md_path.stem}-parallel.png"))


def write_search_plots(md_path: Path, storage_url: str, study_name: str, metric: str,
                       keys: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Draw the study's optimisation history and parallel coordinates (finished trials only) with Optuna's matplotlib
    backend and return the report's ``## Search plots`` section.

    Args:
        md_path: the report; the PNGs go beside it (:func:`search_plot_paths`).
        storage_url: the study's storage (``sqlite:///<sweep folder>/optuna.db``).
        study_name: the study (the sweep's name).
        metric: the study's objective, for the axis labels.
        keys: the searched dotted keys; the parallel plot names its axes as the report's table does.

    Returns:
        The PNGs written (none with fewer than :data:`MIN_PLOT_TRIALS` finished trials, or when drawing failed:
        the section says why), and the section's markdown lines.
    """
    import optuna

    paths = search_plot_paths(md_path)
    lines, reason = ["## Search plots", ""], ""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage_url)
        finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if finished >= MIN_PLOT_TRIALS:
            _draw(study, paths, metric, keys)
    except Exception as exc:  # noqa: BLE001 - the plots are an add-on: the report is written regardless
        finished, reason = -1, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if finished < MIN_PLOT_TRIALS:
        for path in paths:   # an earlier report's plots would no longer match this one
            path.unlink(missing_ok=True)
        why = (f"they need at least {MIN_PLOT_TRIALS} finished trials and the study has {finished}" if finished >= 0
               else f"drawing them failed ({reason})")
        return [], [*lines, f"No optimisation-history or parallel-coordinate plot: {why}.", ""]
    history, parallel = paths
    lines += [f"Optuna's optimisation history ({finished} finished trials, in the order they were sampled, with the "
              "best so far) and the parallel coordinates of the searched parameters against the metric "
              "(a parameter a trial did not draw sits on the axis's `None` tick):", "",
              f"![optimisation history]({history.name})", "", f"![parallel coordinates]({parallel.name})", ""]
    return list(paths), lines


def _draw(study: Any, paths: tuple[Path, Path], metric: str, keys: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history, plot_parallel_coordinate

    # rc_context: Optuna's history plot switches the process-wide style to ggplot; restore it for later plots.
    with warnings.catch_warnings(), matplotlib.rc_context():
        # Optuna marks its matplotlib plots experimental (since 2.2) and warns on every call: nothing a reader of
        # the report can act on.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        # A parameter that took one value in every finished trial has a flat axis, which matplotlib widens itself.
        warnings.filterwarnings("ignore", message="Attempting to set identical", category=UserWarning)
        history = plot_optimization_history(study, target_name=metric)
        history.xaxis.get_major_locator().set_params(integer=True)   # trial numbers
        _save(history.figure, paths[0], plt)
        parallel = plot_parallel_coordinate(study, target_name=metric)
        _relabel(parallel, keys)
        _save(parallel.figure, paths[1], plt)


def _relabel(ax: Any, keys: Sequence[str]) -> None:
    """Name the parallel plot's parameter axes by their short names (Optuna cuts a long key to 17 characters and
    ``...``, which leaves ``stage3.semantic_p...`` twice)."""
    names = short_keys(keys)
    labels = []
    for tick in ax.get_xticklabels():
        text = tick.get_text()
        stem = text[:-3] if text.endswith("...") else None
        found = [k for k in keys if k == text or (stem is not None and k.startswith(stem))]
        labels.append(names[found[0]] if len(found) == 1 else text)
    ax.set_xticks(ax.get_xticks(), labels, rotation=30, ha="right")
    ax.figure.set_size_inches(max(6.4, 1.3 * len(labels)), 4.8)


def _save(fig: Any, path: Path, plt: Any) -> None:
    """PNG without the Software entry (the matplotlib version), so equal studies give equal files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
