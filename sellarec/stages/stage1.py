"""Stage 1: LoRA instruction tuning of the LLM on Yes/No CTR prompts (METHOD.md §2; TALLRec-style).

Inputs: the dataset, the backbone, the shared evaluation rows. Output: the adapter weights selected on
``eval.select_on`` and the AUC/UAUC of the stage-1 model (the `tallrec-style` baseline) on valid;
:func:`evaluate_test` adds test, with warm/cold slices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from sellarec.config import EvalConfig, Stage1Config
from sellarec.data.batches import build_examples, collate
from sellarec.data.dataset import Dataset
from sellarec.models.backbone import Backbone
from sellarec.models.lora import adapter_state, attach_lora, load_adapter_state
from sellarec.stages.evaluation import evaluate_scores, score_examples
from sellarec.stages.loop import OnEval, run_loop

__all__ = ["Stage1Output", "run", "score_rows", "evaluate_test"]



@dataclass
class Stage1Output:
    """What stage 1 hands on.

    Attributes:
        model: the backbone wrapped with the selected adapter, frozen, in eval mode.
        adapter: detached copy of the adapter weights.
        metrics: ``valid/auc``, ``valid/auc_ci_low``, ``valid_warm/auc``, ... of the selected adapter (test metrics
            come from :func:`evaluate_test`, a step of their own that sweeps skip).
        history: one record per evaluation (step, lr, train loss, AUC on the selection split).
        best_step: the optimizer step of the selected adapter.
        steps: optimizer steps taken.
        train_samples: training prompts used.
        truncated: prompts that had history titles dropped to fit ``backbone.max_length``.
        seconds: wall time of the stage.
    """

    model: torch.nn.Module
    adapter: dict[str, torch.Tensor]
    metrics: dict[str, float]
    history: list[dict] = field(default_factory=list)
    best_step: int = 0
    steps: int = 0
    train_samples: int = 0
    truncated: int = 0
    seconds: float = 0.0


def _score(model: torch.nn.Module, backbone: Backbone, examples: list, eval_cfg: EvalConfig, split: str,
           progress: bool) -> np.ndarray:
    return score_examples(backbone, examples, batch_size=eval_cfg.batch_size, score_fn=eval_cfg.score_fn,
                          model=model, progress=progress, desc=f"stage1 {split}")


def run(cfg: Stage1Config, eval_cfg: EvalConfig, ds: Dataset, backbone: Backbone, *, valid_rows: pd.DataFrame,
        test_rows: pd.DataFrame, max_length: int, seed: int, progress: bool = False,
        on_eval: OnEval | None = None) -> Stage1Output:
    """Train the LoRA adapter, selecting on ``eval_cfg.select_on``, and evaluate it on valid. See the module docstring.

    ``test_rows`` are scored during training only when ``eval.select_on`` is 'test' (the official code's choice).
    """
    start = time.perf_counter()
    # --- inputs
    train_rows = ds.split("train")
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train_rows):
        train_rows = train_rows.sample(n=cfg.max_train_samples, random_state=seed).sort_index()
    tok = backbone.tokenizer
    train = build_examples(ds, train_rows, tok, stage=1, max_length=max_length, with_answer=True)
    valid = build_examples(ds, valid_rows, tok, stage=1, max_length=max_length, with_answer=False)
    select_rows = valid_rows if eval_cfg.select_on == "valid" else test_rows
    select = (valid if eval_cfg.select_on == "valid" else
              build_examples(ds, test_rows, tok, stage=1, max_length=max_length, with_answer=False))
    truncated = sum(e.truncated_titles > 0 for e in train + valid)

    # --- model
    model = attach_lora(backbone.model, cfg.lora, trainable=True)

    def loss_fn(chunk: list) -> torch.Tensor:
        batch = collate(chunk, tok.pad_token_id, cfg.loss_mask).to(backbone.device)
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss

    def evaluate_select() -> tuple[float, np.ndarray]:
        scores = _score(model, backbone, select, eval_cfg, eval_cfg.select_on, progress)
        return evaluate_scores(ds, select_rows, scores, eval_cfg, "select")["select/auc"], scores

    # --- train
    loop = run_loop(
        name="stage1", examples=train, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, epochs=cfg.epochs,
        loss_fn=loss_fn, params=[p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=cfg.betas,
        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, schedule=cfg.schedule,
        warmup_ratio=cfg.warmup_ratio, eval_every_steps=cfg.eval_every_steps, evaluate=evaluate_select,
        snapshot=lambda: adapter_state(model), train_mode=model.train,
        generator=torch.Generator().manual_seed(seed), progress=progress, on_eval=on_eval,
        select_on=eval_cfg.select_on)

    # --- evaluate the selected adapter on valid
    load_adapter_state(model, loop.best_state)
    model.eval()
    model.requires_grad_(False)
    valid_scores = (loop.best_scores if eval_cfg.select_on == "valid"
                    else _score(model, backbone, valid, eval_cfg, "valid", progress))
    metrics = evaluate_scores(ds, valid_rows, valid_scores, eval_cfg, "valid", seed=seed, bootstrap=True)
    return Stage1Output(model=model, adapter=loop.best_state, metrics=metrics, history=loop.history,
                        best_step=loop.best_step, steps=loop.steps, train_samples=len(train), truncated=truncated,
                        seconds=time.perf_counter() - start)


def score_rows(model: torch.nn.Module, eval_cfg: EvalConfig, ds: Dataset, backbone: Backbone, rows: pd.DataFrame,
               *, max_length: int, progress: bool = False, split: str = "test") -> np.ndarray:
    """Scores (N,) of the stage-1 model on ``rows`` (``user``, ``item``, ``history``, ``label``), in their order:
    their stage-1 prompts scored by ``eval_cfg.score_fn``, as every stage-1 evaluation does."""
    examples = build_examples(ds, rows, backbone.tokenizer, stage=1, max_length=max_length, with_answer=False)
    return _score(model, backbone, examples, eval_cfg, split, progress)


def evaluate_test(model: torch.nn.Module, eval_cfg: EvalConfig, ds: Dataset, backbone: Backbone, *,
                  test_rows: pd.DataFrame, max_length: int, seed: int, progress: bool = False) -> dict[str, float]:
    """AUC/UAUC with bootstrap CIs of the stage-1 model on ``test_rows`` (all, warm, cold): the TALLRec-style number.

    A step of its own so that a sweep, which selects on valid and never needs it, skips it.
    """
    scores = score_rows(model, eval_cfg, ds, backbone, test_rows, max_length=max_length, progress=progress)
    return evaluate_scores(ds, test_rows, scores, eval_cfg, "test", seed=seed, bootstrap=True)
