"""Stage 1: LoRA instruction tuning of the LLM on Yes/No CTR prompts (METHOD.md §2; TALLRec-style).

Inputs: the dataset, the backbone, the shared evaluation rows. Output: the best-on-valid adapter weights and the
AUC/UAUC of the stage-1 model (the `tallrec` baseline) on valid and test, with warm/cold slices.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sellarec.config import EvalConfig, Stage1Config
from sellarec.data.batches import build_examples, collate, iter_batches
from sellarec.data.dataset import Dataset
from sellarec.models.backbone import Backbone
from sellarec.models.lora import adapter_state, attach_lora, load_adapter_state
from sellarec.stages.evaluation import evaluate_scores, score_examples

__all__ = ["Stage1Output", "lr_factor", "run"]

log = logging.getLogger(__name__)
OnEval = Callable[[dict[str, float], int], None]


@dataclass
class Stage1Output:
    """What stage 1 hands on.

    Attributes:
        model: the backbone wrapped with the (best-on-valid) adapter, frozen, in eval mode.
        adapter: detached copy of the adapter weights.
        metrics: ``valid/auc``, ``test/uauc``, ``test_warm/auc``, ... of the selected adapter.
        history: one record per evaluation (step, lr, train loss, valid AUC).
        steps: optimizer steps taken.
        train_samples: training prompts used.
        truncated: prompts that had history titles dropped to fit ``backbone.max_length``.
        seconds: wall time of the stage.
    """

    model: torch.nn.Module
    adapter: dict[str, torch.Tensor]
    metrics: dict[str, float]
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    train_samples: int = 0
    truncated: int = 0
    seconds: float = 0.0


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


def run(cfg: Stage1Config, eval_cfg: EvalConfig, ds: Dataset, backbone: Backbone, *, valid_rows: pd.DataFrame,
        test_rows: pd.DataFrame, max_length: int, seed: int, progress: bool = False,
        on_eval: OnEval | None = None) -> Stage1Output:
    """Train the LoRA adapter and evaluate it. See the module docstring."""
    start = time.perf_counter()
    # --- inputs
    train_rows = ds.split("train")
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train_rows):
        train_rows = train_rows.sample(n=cfg.max_train_samples, random_state=seed).sort_index()
    tok = backbone.tokenizer
    train = build_examples(ds, train_rows, tok, stage=1, max_length=max_length, with_answer=True)
    valid = build_examples(ds, valid_rows, tok, stage=1, max_length=max_length, with_answer=False)
    test = build_examples(ds, test_rows, tok, stage=1, max_length=max_length, with_answer=False)
    truncated = sum(e.truncated_titles > 0 for e in train + valid + test)

    # --- model
    model = attach_lora(backbone.model, cfg.lora, trainable=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    micro_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = cfg.epochs * math.ceil(micro_per_epoch / cfg.grad_accum)
    warmup = max(1, math.ceil(cfg.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(cfg.schedule, s, warmup, total_steps))

    def evaluate_valid() -> tuple[float, np.ndarray]:
        scores = score_examples(backbone, valid, batch_size=eval_cfg.batch_size, score_fn=eval_cfg.score_fn,
                                model=model, progress=progress, desc="stage1 valid")
        return evaluate_scores(ds, valid_rows, scores, eval_cfg, "valid")["valid/auc"], scores

    # --- train
    history: list[dict] = []
    best_auc, best_state, best_valid_scores, step, running = -math.inf, None, None, 0, []
    model.train()
    bar = tqdm(total=total_steps, desc="stage1 LoRA", disable=not progress, leave=False)
    for _ in range(cfg.epochs):
        chunks = iter_batches(train, cfg.batch_size, shuffle=True, generator=generator)
        for index, chunk in enumerate(chunks):
            batch = collate(chunk, tok.pad_token_id, cfg.loss_mask).to(backbone.device)
            loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
            (loss / cfg.grad_accum).backward()
            running.append(loss.item())
            if (index + 1) % cfg.grad_accum and index + 1 != len(chunks):
                continue
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{sum(running) / len(running):.4f}")
            last = step == total_steps
            if last or (cfg.eval_every_steps and step % cfg.eval_every_steps == 0):
                valid_auc, valid_scores = evaluate_valid()
                record = {"step": step, "lr": scheduler.get_last_lr()[0],
                          "train_loss": sum(running) / len(running), "valid/auc": valid_auc}
                history.append(record)
                running = []
                log.info("stage1 step %d/%d loss %.4f valid AUC %.4f", step, total_steps, record["train_loss"],
                         valid_auc)
                if on_eval is not None:
                    on_eval({"stage1/valid_auc": valid_auc, "stage1/train_loss": record["train_loss"]}, step)
                if valid_auc > best_auc or best_state is None:
                    best_auc, best_state, best_valid_scores = valid_auc, adapter_state(model), valid_scores
                model.train()
    bar.close()

    # --- evaluate the best-on-valid adapter
    load_adapter_state(model, best_state)
    model.eval()
    model.requires_grad_(False)
    metrics = evaluate_scores(ds, valid_rows, best_valid_scores, eval_cfg, "valid", seed=seed)
    scores = score_examples(backbone, test, batch_size=eval_cfg.batch_size, score_fn=eval_cfg.score_fn, model=model,
                            progress=progress, desc="stage1 test")
    metrics.update(evaluate_scores(ds, test_rows, scores, eval_cfg, "test", seed=seed, bootstrap=True))
    return Stage1Output(model=model, adapter=copy.deepcopy(best_state), metrics=metrics, history=history,
                        steps=step, train_samples=len(train), truncated=truncated,
                        seconds=time.perf_counter() - start)
