"""The optimisation loop shared by the LLM stages (1 and 3): accumulation, clipping, schedule, valid selection.

One order per step (nanoGPT): forward, loss, backward, and every ``grad_accum`` micro-batches clip, step,
schedule, zero_grad, log; every ``eval_every_steps`` steps and at the end, an evaluation pass on the selection split
(``eval.select_on``: valid, or test as the official code) whose AUC selects the state to keep.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sellarec import status
from sellarec.metrics import TRAIN_LOSS, metric_key

__all__ = ["LoopResult", "OnEval", "lr_factor", "optimizer_steps", "run_loop"]

log = logging.getLogger(__name__)
# Called after every evaluation pass with the stage's name, ``{"valid/auc": ..., "train/loss": ...}`` (the selection
# split's AUC, the mean training loss since the previous pass), the optimizer step and the stage's total steps.
OnEval = Callable[[str, dict[str, float], int, int], None]


def lr_factor(schedule: str, step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate at 0-based optimizer ``step``.

    ``constant_warmup`` is what the official DeepSpeed config does: a logarithmic warm-up (WarmupLR), then constant
    (METHOD.md §2.4, gap #7). ``cosine``: linear warm-up, then cosine decay to 0.
    """
    if schedule == "constant_warmup":
        if step >= warmup_steps - 1:
            return 1.0
        return math.log(step + 2) / math.log(warmup_steps + 1)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class LoopResult:
    """Outcome of :func:`run_loop`.

    Attributes:
        best_state: what ``snapshot()`` returned at the best AUC on the selection split.
        best_scores: the selection split's scores of that state.
        best_step: the optimizer step of that state.
        history: one record per evaluation (step, lr, mean train loss since the last one, ``<split>/auc``).
        steps: optimizer steps taken.
    """

    best_state: Any
    best_scores: np.ndarray
    best_step: int = 0
    history: list[dict] = field(default_factory=list)
    steps: int = 0


def optimizer_steps(examples: int, batch_size: int, grad_accum: int, epochs: int) -> int:
    """Optimizer steps :func:`run_loop` takes: per epoch, micro-batches of ``batch_size`` (the last may be short)
    grouped by ``grad_accum`` (the last group may be short and still steps)."""
    return epochs * math.ceil(math.ceil(examples / batch_size) / grad_accum)


def run_loop(*, name: str, examples: Sequence[Any], batch_size: int, grad_accum: int, epochs: int,
             loss_fn: Callable[[list[Any]], torch.Tensor], params: list[torch.nn.Parameter], lr: float,
             betas: tuple[float, float], weight_decay: float, grad_clip: float, schedule: str, warmup_ratio: float,
             eval_every_steps: int, evaluate: Callable[[], tuple[float, np.ndarray]], snapshot: Callable[[], Any],
             train_mode: Callable[[], None], generator: torch.Generator, progress: bool = False,
             on_eval: OnEval | None = None, select_on: str = "valid") -> LoopResult:
    """Train ``params`` with AdamW on shuffled micro-batches of ``examples`` and keep the best state on ``select_on``.

    Args:
        name: stage name for logs and the progress bar.
        loss_fn: micro-batch (list of examples) -> scalar loss (mean over its targets).
        evaluate: returns (AUC, scores) of the current state on the selection split.
        snapshot: returns a copy of the state to keep when validation improves.
        train_mode: puts the model(s) back in training mode after an evaluation.
        generator: shuffling RNG.
        on_eval: called after every evaluation (a sweep's ASHA rungs), see :data:`OnEval`.
        select_on: name of the split ``evaluate`` scores (keys and logs only).
        Other arguments are the stage's optimisation settings.
    """
    from sellarec.data.batches import iter_batches

    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    total_steps = optimizer_steps(len(examples), batch_size, grad_accum, epochs)
    warmup = max(1, math.ceil(warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(schedule, s, warmup, total_steps))
    result = LoopResult(best_state=None, best_scores=np.zeros(0))
    best_auc, running = -math.inf, []
    train_mode()
    bar = tqdm(total=total_steps, desc=name, disable=not progress, leave=False)
    for _ in range(epochs):
        chunks = iter_batches(examples, batch_size, shuffle=True, generator=generator)
        for index, chunk in enumerate(chunks):
            loss = loss_fn(chunk)
            (loss / grad_accum).backward()
            running.append(loss.item())
            if (index + 1) % grad_accum and index + 1 != len(chunks):
                continue
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(running):.4f}")
            status.update(f"{name} train", result.steps, total_steps)
            if result.steps != total_steps and not (eval_every_steps and result.steps % eval_every_steps == 0):
                continue
            select_auc, select_scores = evaluate()
            record = {"step": result.steps, "lr": scheduler.get_last_lr()[0], "train_loss": float(np.mean(running)),
                      f"{select_on}/auc": select_auc}
            result.history.append(record)
            running = []
            log.info("%s step %d/%d loss %.4f %s AUC %.4f", name, result.steps, total_steps,
                     record["train_loss"], select_on, select_auc)
            if on_eval is not None:
                on_eval(name, {metric_key(select_on, "auc"): select_auc, TRAIN_LOSS: record["train_loss"]},
                        result.steps, total_steps)
            # A NaN AUC (one class) never wins; ties keep the earlier, cheaper-to-reach state.
            rank = -math.inf if math.isnan(select_auc) else select_auc
            if result.best_state is None or rank > best_auc:
                best_auc, result.best_state, result.best_scores = rank, snapshot(), select_scores
                result.best_step = result.steps
            train_mode()
    bar.close()
    return result
