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
