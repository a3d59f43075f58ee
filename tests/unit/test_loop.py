"""The shared training loop keeps the state with the best AUC on the selection split, at the profile's cadence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sellarec.stages.loop import optimizer_steps, run_loop


def _run(aucs: list[float], *, steps: int, every: int, select_on: str = "valid"):
    """A one-parameter model trained for ``steps`` optimizer steps; evaluation returns the scripted ``aucs``."""
    weight = torch.nn.Parameter(torch.zeros(1))
    calls: list[int] = []
    seen: list[tuple[str, dict, int, int]] = []

    def evaluate() -> tuple[float, np.ndarray]:
        calls.append(len(calls))
        return aucs[len(calls) - 1], np.full(3, float(len(calls)))   # scores tell which evaluation they came from

    result = run_loop(
        name="stage3", examples=list(range(steps)), batch_size=1, grad_accum=1, epochs=1,
        loss_fn=lambda chunk: (weight - 1.0).pow(2).sum(), params=[weight], lr=0.1, betas=(0.9, 0.95),
        weight_decay=0.0, grad_clip=1.0, schedule="constant_warmup", warmup_ratio=0.0, eval_every_steps=every,
        evaluate=evaluate, snapshot=lambda: float(weight.item()), train_mode=lambda: None,
        generator=torch.Generator().manual_seed(0), on_eval=lambda *call: seen.append(call), select_on=select_on)
    return result, calls, seen


def test_the_best_evaluation_wins_not_the_last() -> None:
    result, calls, seen = _run([0.60, 0.80, 0.70], steps=6, every=2)
    assert len(calls) == 3                                             # steps 2, 4 and 6 (the end)
    assert [(stage, step, total) for stage, _, step, total in seen] == [("stage3", 2, 6), ("stage3", 4, 6),
                                                                     ("stage3", 6, 6)]
    assert [m["valid/auc"] for _, m, _, _ in seen] == [0.60, 0.80, 0.70]
    assert result.best_step == 4 and result.best_scores.tolist() == [2.0, 2.0, 2.0]
    # AdamW's first steps move the weight by about lr each: after 4 steps it is near 0.4, not the final ~0.6.
    assert 0.3 < result.best_state < 0.45
    assert [h["valid/auc"] for h in result.history] == [0.60, 0.80, 0.70]


def test_nan_never_wins_and_cadence_zero_evaluates_once() -> None:
    result, _, _ = _run([math.nan, 0.55, 0.50], steps=6, every=2)
    assert result.best_step == 4
    result, calls, _ = _run([0.5], steps=5, every=0)
    assert len(calls) == 1 and result.best_step == 5


def test_selection_split_names_the_keys() -> None:
    result, _, seen = _run([0.6, 0.7], steps=4, every=2, select_on="test")
    assert "test/auc" in result.history[0] and set(seen[0][1]) == {"test/auc", "train/loss"}


@pytest.mark.parametrize("examples, batch, accum, epochs", [(10, 3, 2, 1), (8, 4, 2, 2), (7, 1, 3, 1), (1, 8, 4, 3)])
def test_optimizer_steps_counts_the_steps_the_loop_takes(examples: int, batch: int, accum: int, epochs: int) -> None:
    # Counted independently: one optimizer.step per accum micro-batches, a short final group still steps.
    weight = torch.nn.Parameter(torch.zeros(1))
    result = run_loop(
        name="stage3", examples=list(range(examples)), batch_size=batch, grad_accum=accum, epochs=epochs,
        loss_fn=lambda chunk: (weight - 1.0).pow(2).sum(), params=[weight], lr=0.1, betas=(0.9, 0.95),
        weight_decay=0.0, grad_clip=1.0, schedule="constant_warmup", warmup_ratio=0.0, eval_every_steps=0,
        evaluate=lambda: (0.5, np.zeros(1)), snapshot=lambda: None, train_mode=lambda: None,
        generator=torch.Generator().manual_seed(0))
    micro = -(-examples // batch)
    by_hand = epochs * (micro // accum + (1 if micro % accum else 0))
    assert result.steps == optimizer_steps(examples, batch, accum, epochs) == by_hand
