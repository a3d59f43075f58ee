"""The sweep report names a best configuration only when its interval clears the runner-up's (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sellarec.tuning.report import TrialRow, rank_rows, resolution, verdict, winner, write_report

METRIC = "valid/auc"


def _row(trial_id: str, auc: float, low: float | None, high: float | None, status: str = "finished") -> TrialRow:
    metrics = {METRIC: auc, "valid/rows": 200}
    if low is not None:
        metrics |= {f"{METRIC}_ci_low": low, f"{METRIC}_ci_high": high}
    return TrialRow(trial_id, status, {"stage3.lr": 1e-3}, metrics)


def test_separated_intervals_name_the_top_trial() -> None:
    rows = rank_rows([_row("b", 0.60, 0.55, 0.65), _row("a", 0.80, 0.76, 0.84)], METRIC, "max")
    assert winner(rows, METRIC, "max").trial_id == "a"
    assert "clears the runner-up's (`b`" in "\n".join(verdict(rows, METRIC, "max"))


def test_overlapping_intervals_name_no_winner_and_list_every_interval() -> None:
    # 0.70's lower bound 0.64 sits below 0.66's upper bound 0.71: the two cannot be ordered.
    rows = rank_rows([_row("a", 0.70, 0.64, 0.76), _row("b", 0.66, 0.61, 0.71), _row("c", 0.50, 0.44, 0.56)],
                     METRIC, "max")
    assert winner(rows, METRIC, "max") is None
    text = "\n".join(verdict(rows, METRIC, "max"))
    assert "No best configuration" in text and "These 2 finished trials have intervals that overlap" in text
    for interval in ("[0.6400, 0.7600]", "[0.6100, 0.7100]"):
        assert interval in text
    assert "[0.4400, 0.5600]" not in text            # c's interval ends below a's: not tied with the top
    assert "The other 1 finished trials lie wholly below" in text and "candidate, not a winner" in text


def test_only_the_runner_up_matters_and_stopped_trials_are_not_runners_up() -> None:
    # A stopped trial with a high interval ranks after the finished ones and cannot block the winner.
    rows = rank_rows([_row("a", 0.80, 0.76, 0.84), _row("b", 0.60, 0.55, 0.65),
                      _row("s", 0.85, 0.80, 0.90, status="stopped")], METRIC, "max")
    assert winner(rows, METRIC, "max").trial_id == "a"


def test_min_mode_needs_the_top_interval_wholly_below() -> None:
    rows = rank_rows([_row("a", 0.30, 0.25, 0.35), _row("b", 0.40, 0.36, 0.44)], METRIC, "min")
    assert winner(rows, METRIC, "min").trial_id == "a"
    rows = rank_rows([_row("a", 0.30, 0.25, 0.37), _row("b", 0.40, 0.36, 0.44)], METRIC, "min")
    assert winner(rows, METRIC, "min") is None


@pytest.mark.parametrize("rows", [
    [_row("a", 0.80, 0.76, 0.84)],                              # one finished trial compares nothing
    [_row("a", 0.80, None, None), _row("b", 0.60, 0.55, 0.65)],  # a missing interval is no evidence
    [],
])
def test_no_winner_without_two_finished_trials_with_intervals(rows: list[TrialRow]) -> None:
    assert winner(rank_rows(rows, METRIC, "max"), METRIC, "max") is None


def test_report_file_carries_the_verdict_and_the_command(tmp_path: Path) -> None:
    rows = rank_rows([_row("a", 0.70, 0.64, 0.76), _row("b", 0.66, 0.61, 0.71)], METRIC, "max")
    md = tmp_path / "sweep.md"
    importances = {"PED-ANOVA": "n/a: needs at least 8 finished trials, has 2"}
    write_report(md, rows, ["stage3.lr"], METRIC, "max", importances, ["space: x"], "python -m sellarec train",
                 ["see MLflow"], top_k=5)
    text = md.read_text()
    best_section = text.split("## Best configuration", 1)[1].split("## Top", 1)[0]
    assert "cannot order them" in best_section and "python -m sellarec train" in best_section
    assert "needs at least 8 finished trials" in text
    assert md.with_suffix(".png").stat().st_size > 0


def test_incumbent_is_marked_with_its_rank(tmp_path: Path) -> None:
    rows = rank_rows([_row("a", 0.70, 0.64, 0.76), _row("base", 0.66, 0.61, 0.71), _row("c", 0.50, 0.44, 0.56)],
                     METRIC, "max")
    md = tmp_path / "sweep.md"
    write_report(md, rows, ["stage3.lr"], METRIC, "max", {}, [], "cmd", [], top_k=5, incumbent="base")
    text = md.read_text()
    assert "The incumbent, trial `base`, ran the base configuration's own setting" in text and "rank 2 of 3" in text
    assert "| 2 | base (incumbent) |" in text


def test_resolution_is_twice_the_top_half_width_and_four_times_the_rows_halve_it() -> None:
    # a: [0.64, 0.76] is ±0.06 on 200 rows, so trials 0.12 apart are the closest this sweep can order.
    rows = rank_rows([_row("a", 0.70, 0.64, 0.76), _row("b", 0.66, 0.61, 0.71)], METRIC, "max")
    text = " ".join(resolution(rows, METRIC))
    assert "±0.0600 on 200 rows" in text and "more than about 0.1200" in text and "about 800 rows" in text
    assert resolution(rank_rows([_row("a", 0.7, None, None)], METRIC, "max"), METRIC) == []


def _study(tmp_path: Path, values: list[float], pruned: int = 1) -> str:
    """A sweep-like Optuna study in a tmp sqlite file: one finished trial per value (known params; the second did not
    draw the conditional rank), then ``pruned`` stopped ones; returns its storage URL."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="sweep", storage=url, direction="maximize")
    dists = {"stage3.collab_projector.type": CategoricalDistribution(["mlp", "linear"]),
             "stage3.semantic_projector.rank": IntDistribution(8, 256, log=True),
             "stage3.lr": FloatDistribution(1e-4, 3e-3, log=True)}
    kinds, ranks, lrs = ["mlp", "linear", "mlp", "linear"], [8, 64, 175, 32], [1e-4, 3e-4, 1e-3, 3e-3]
    for i, value in enumerate(values):
        params = {"stage3.collab_projector.type": kinds[i], "stage3.semantic_projector.rank": ranks[i],
                  "stage3.lr": lrs[i]}
        if i == 1:
            del params["stage3.semantic_projector.rank"]
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                  value=value))
    for _ in range(pruned):
        study.add_trial(optuna.trial.create_trial(params={"stage3.lr": 2e-4}, state=optuna.trial.TrialState.PRUNED,
                                                  distributions={"stage3.lr": dists["stage3.lr"]}))
    return url


def _write(md: Path, url: str) -> list[Path]:
    rows = rank_rows([_row("a", 0.70, 0.64, 0.76), _row("b", 0.66, 0.61, 0.71)], METRIC, "max")
    return write_report(md, rows, ["stage3.collab_projector.type", "stage3.semantic_projector.rank", "stage3.lr"],
                        METRIC, "max", {}, [], "cmd", [], top_k=5, study_storage=url, study_name="sweep")


def test_the_search_plots_are_written_beside_the_report_and_linked(tmp_path: Path) -> None:
    import warnings

    from matplotlib.image import imread

    url = _study(tmp_path, [0.61, 0.72, 0.66])
    md = tmp_path / "out" / "sweep.md"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pngs = _write(md, url)
    assert [str(w.message) for w in caught] == []                        # Optuna's ExperimentalWarning stays inside
    history, parallel = tmp_path / "out" / "sweep-history.png", tmp_path / "out" / "sweep-parallel.png"
    assert pngs == [md.with_suffix(".png"), history, parallel]
    for png in (history, parallel):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = imread(png).shape                             # decodes: a whole image, not a stub
        assert height > 100 and width > 100
    text = md.read_text()
    section = text.split("## Search plots", 1)[1].split("## Where to look further", 1)[0]
    assert "(sweep-history.png)" in section and "(sweep-parallel.png)" in section
    assert "3 finished trials" in section
    again = tmp_path / "again" / "sweep.md"
    _write(again, url)
    for name in ("sweep-history.png", "sweep-parallel.png"):                # no timestamp or version in the file
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()


def test_one_finished_trial_draws_no_search_plot_and_says_why(tmp_path: Path) -> None:
    md = tmp_path / "sweep.md"
    pngs = _write(md, _study(tmp_path, [0.61], pruned=2))
    assert pngs == [md.with_suffix(".png")]
    assert not (tmp_path / "sweep-history.png").exists() and not (tmp_path / "sweep-parallel.png").exists()
    section = md.read_text().split("## Search plots", 1)[1].split("## Where to look further", 1)[0]
    assert "No optimisation-history or parallel-coordinate plot: they need at least 2 finished trials and the " \
           "study has 1." in section
    assert ".png)" not in section
