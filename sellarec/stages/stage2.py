"""Stage 2b: train MF with the recommendation loss plus the MF -> LLM alignment loss (METHOD.md §4.3).

Inputs: a processed :class:`~sellarec.data.Dataset` and the (num_items, D_llm) semantic item table of stage 2a.
Output: :class:`CollabResult`, the best-valid MF (user/item embeddings, updated semantic table, projection) with
its valid/test metrics. Nothing is written to disk; the caller caches the model's state dict.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from sellarec import status
from sellarec.config import Stage2Config
from sellarec.data.dataset import Dataset
from sellarec.errors import ConfigError, DataError
from sellarec.metrics import auc, evaluate_slices, metric_key, uauc
from sellarec.models.mf import AlignedMF, alignment_loss

__all__ = ["CollabResult", "train_collab", "score_logits"]

logger = logging.getLogger(__name__)

# Official abort rule (METHOD.md §4.3): past this epoch, a best valid AUC under the floor means the run is dead.
ABORT_AFTER_EPOCH = 500
ABORT_AUC_FLOOR = 0.52


@dataclass
class CollabResult:
    """Output of :func:`train_collab`.

    Attributes:
        model: the MF at its best valid AUC, in eval mode.
        metrics: ``valid/auc``, ``valid/uauc``, ``test/auc``, ... with ``_warm``/``_cold`` slices
            (:func:`~sellarec.metrics.evaluate_slices` keys) of the best-valid model.
        align: ``{"cos_before", "cos_after"}``: mean cosine of ``proj(item_emb[i])`` and ``item_sem[i]`` over all
            real items at initialisation and for the best-valid model; None for a plain MF (``align='none'``).
        history: one record per epoch: ``epoch``, ``train/loss``, ``train/rec_loss``, ``train/align_loss``
            (row-weighted epoch means), ``valid/auc``, ``valid/uauc``, ``seconds`` (since the start).
        best_epoch: epoch (from 1) of the best valid AUC; 0 if no epoch had a defined valid AUC.
        epochs_run: epochs trained before stopping.
        seconds: wall time of the whole call.
    """

    model: AlignedMF
    metrics: dict[str, float]
    align: dict[str, float] | None
    history: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    seconds: float


def _as_tensors(rows: pd.DataFrame, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(users, items, labels) of ``rows`` as (N,) long, long, float tensors on ``device``."""
    users = torch.tensor(rows["user"].to_numpy(np.int64), device=device)
    items = torch.tensor(rows["item"].to_numpy(np.int64), device=device)
    labels = torch.tensor(rows["label"].to_numpy(np.float32), device=device)
    return users, items, labels


@torch.no_grad()
def score_logits(model: AlignedMF, rows: pd.DataFrame, batch_size: int, device: torch.device) -> np.ndarray:
    """MF logits of ``rows`` (N,), computed in chunks of ``batch_size``: what stage 2's AUC/UAUC rank by."""
    model.eval()
    users, items, _ = _as_tensors(rows, device)
    chunks = [model(users[k:k + batch_size], items[k:k + batch_size]) for k in range(0, len(rows), batch_size)]
    return torch.cat(chunks).cpu().numpy() if chunks else np.zeros(0, dtype=np.float32)


def _train_epoch(model: AlignedMF, optimizer: torch.optim.Optimizer, cfg: Stage2Config,
                 data: tuple[Tensor, Tensor, Tensor], generator: torch.Generator) -> dict[str, float]:
    """One shuffled pass over the train interactions; returns row-weighted mean losses."""
    model.train()
    users, items, labels = data
    order = torch.randperm(len(users), generator=generator).to(users.device)  # (N,)
    sums = {"train/loss": 0.0, "train/rec_loss": 0.0, "train/align_loss": 0.0}
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]  # (B,)
        logits = model(users[idx], items[idx])  # (B,)
        rec = F.binary_cross_entropy_with_logits(logits, labels[idx])
        # All B items of the batch, positives and negatives, duplicates included (METHOD.md §4.2).
        align = alignment_loss(cfg.align, model, items[idx], tau=cfg.tau, q=cfg.rince_q, lam=cfg.rince_lambda)
        loss = rec + cfg.align_weight * align
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for key, value in (("train/loss", loss), ("train/rec_loss", rec), ("train/align_loss", align)):
            sums[key] += value.item() * len(idx)
    return {key: value / len(order) for key, value in sums.items()}


def train_collab(cfg: Stage2Config, ds: Dataset, semantic: Tensor | None, *, seed: int,
                 eval_batch_size: int = 8192, on_epoch: Callable[[int, dict], None] | None = None,
                 device: torch.device | str = "cpu", report_rows: dict[str, pd.DataFrame] | None = None,
                 bootstrap_samples: int = 0) -> CollabResult:
    """Train the stage-2b MF with early stopping on valid AUC and return the best-valid model (METHOD.md §4.3).

    Args:
        cfg: stage-2 settings (emb_dim, proj_hidden, lr, weight_decay, batch_size, max_epochs, patience, align, ...).
        ds: the processed dataset; trains on ``ds.split('train', raw=True)`` (or the filtered rows when
            ``cfg.train_on == 'filtered'``), selects on ``ds.split('valid')``, reports ``ds.split('test')`` too.
        semantic: (num_items, D_llm) float semantic item table from stage 2a; ignored (no table is built) when
            ``cfg.align == 'none'``, required otherwise. Never modified in place.
        seed: seeds the parameter init (through a forked global RNG, restored afterwards) and the batch shuffling.
        eval_batch_size: rows per scoring chunk.
        on_epoch: called as ``on_epoch(epoch, record)`` after each epoch with that epoch's history record.
        device: where the model and data live (the runtime picks it).
        report_rows: rows the final metrics are computed on, per split ('valid', 'test'); default the whole
            prompt-level splits. The pipeline passes the LLM stages' evaluation rows so all stages share them.
        bootstrap_samples: user-bootstrap resamples for CIs on the reported metrics (0 = none).

    Returns:
        A :class:`CollabResult`.

    Raises:
        ConfigError: ``cfg.align`` needs a semantic table and none was given, or the table has the wrong row count.
        DataError: the valid split has no rows to select on.
    """
    start_time = time.perf_counter()
    device = torch.device(device)

    # --- inputs
    aligned = cfg.align != "none"
    if aligned and semantic is None:
        raise ConfigError(f"stage2.align={cfg.align!r} needs the semantic item table; pass it or set align=none")
    if aligned and (semantic.dim() != 2 or semantic.shape[0] != ds.num_items):
        raise ConfigError(f"semantic table has shape {tuple(semantic.shape)} but dataset {ds.name!r} has "
                          f"{ds.num_items} item rows (padding included); rebuild stage 2a for this dataset")
    train_rows = ds.split("train", raw=cfg.train_on == "raw")
    valid_rows, test_rows = ds.split("valid"), ds.split("test")
    if len(valid_rows) == 0:
        raise DataError(f"dataset {ds.name!r} has no valid rows with a history; early stopping needs them")
    train_data = _as_tensors(train_rows, device)
    valid_users, valid_labels = valid_rows["user"].to_numpy(), valid_rows["label"].to_numpy()

    # --- model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AlignedMF(ds.num_users, ds.num_items, cfg.emb_dim, semantic=semantic if aligned else None,
                          proj_hidden=cfg.proj_hidden, train_semantic=cfg.train_semantic).to(device)
    real_items = torch.arange(1, ds.num_items, device=device)  # (I-1,)
    cos_before = model.alignment_cosine(real_items) if aligned else None
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                 weight_decay=cfg.weight_decay)  # coupled L2, as the official code
    generator = torch.Generator().manual_seed(seed)

    # --- train
    history: list[dict[str, float]] = []
    best_auc, best_epoch, bad_epochs = float("-inf"), 0, 0
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(1, cfg.max_epochs + 1):
        record: dict[str, float] = {"epoch": epoch, **_train_epoch(model, optimizer, cfg, train_data, generator)}
        scores = score_logits(model, valid_rows, eval_batch_size, device)
        record[metric_key("valid", "auc")] = auc(valid_labels, scores)
        record[metric_key("valid", "uauc")] = uauc(valid_users, valid_labels, scores).value
        record["seconds"] = time.perf_counter() - start_time
        history.append(record)
        status.update(f"stage2 MF epochs {status.UPPER_BOUND}", epoch, cfg.max_epochs)   # early stopping ends it sooner
        valid_auc = record[metric_key("valid", "auc")]
        if valid_auc > best_auc:  # NaN never improves
            best_auc, best_epoch, bad_epochs = valid_auc, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        logger.info("collab epoch %d: loss %.4f (rec %.4f, align %.4f) valid auc %.4f uauc %.4f (best %.4f @ %d)",
                    epoch, record["train/loss"], record["train/rec_loss"], record["train/align_loss"], valid_auc,
                    record[metric_key("valid", "uauc")], best_auc, best_epoch)
        if on_epoch is not None:
            on_epoch(epoch, record)
        if bad_epochs >= cfg.patience:
            logger.info("collab: early stop after %d epochs without a better valid auc", bad_epochs)
            break
        if epoch > ABORT_AFTER_EPOCH and best_auc < ABORT_AUC_FLOOR:
            logger.info("collab: abort, best valid auc %.4f < %.2f after %d epochs", best_auc, ABORT_AUC_FLOOR, epoch)
            break

    # --- evaluate
    model.load_state_dict(best_state)
    model.eval()
    metrics: dict[str, float] = {}
    warm_col = f"warm_{ds.config.warm_definition}"
    report_rows = report_rows or {"valid": valid_rows, "test": test_rows}
    for split, rows in report_rows.items():
        scored = rows.assign(score=score_logits(model, rows, eval_batch_size, device))
        metrics.update(evaluate_slices(scored, warm_col=warm_col, prefix=split, seed=seed,
                                       bootstrap_samples=bootstrap_samples))
    align = {"cos_before": cos_before, "cos_after": model.alignment_cosine(real_items)} if aligned else None
    return CollabResult(model=model, metrics=metrics, align=align, history=history, best_epoch=best_epoch,
                        epochs_run=len(history), seconds=time.perf_counter() - start_time)
