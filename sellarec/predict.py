"""Scoring (user, item) pairs with a finished run's final model (``sellarec predict``): scores, or each user's top K.

The final stage decides the model and the score: stage 3 (ID tokens injected) and stage 1 (text-only LoRA) give
P(Yes) by the run's ``eval.score_fn``, from the same prompts and the same batched shared-prefix scoring as their
evaluation (:func:`~sellarec.stages.stage3.score_rows`, :func:`~sellarec.stages.stage1.score_rows`); stage 2 (MF)
gives sigmoid(MF logit): its evaluation ranks by the logit, so the AUC is the same.

History rule: a pair is prompted with the user's earlier positives at its prediction point, as every evaluation
row is (:mod:`sellarec.data.protocol`: the last ``data.history_len`` positives strictly before the interaction,
across splits). The prediction point of a pair the data holds is that interaction (the last one if it repeats), so
a test row scores exactly as the test evaluation scored it; a pair the data does not hold is predicted after the
user's last interaction in the data, with all their positives as history.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sellarec.atomic_files import write_text_atomic
from sellarec.data.dataset import Dataset
from sellarec.errors import ConfigError, DataError
from sellarec.pipeline import restore_final_model
from sellarec.run_artifacts import RawIds, RunArtifacts
from sellarec.runtime import cache_root, configure_threads

__all__ = ["PAIR_COLUMNS", "Predictor", "read_pairs", "internal_ids", "pair_rows", "write_csv"]

PAIR_COLUMNS = ("user_id", "item_id")
MF_BATCH_SIZE = 8192  # rows per MF scoring chunk, as stage 2's evaluation (any size gives the same scores)
_SHOWN_UNKNOWN = 10


def read_pairs(path: Path, option: str) -> pd.DataFrame:
    """A csv of (user_id, item_id) pairs, ids as strings (other columns are ignored).

    Raises:
        DataError: unreadable file, missing column, empty cells or no rows.
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{option} {path} does not exist") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{option} {path} cannot be parsed as csv: {str(exc).splitlines()[0]}") from None
    missing = [c for c in PAIR_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{option} {path} lacks column(s) {', '.join(missing)} (has {', '.join(frame.columns)}); "
                        "write a header line user_id,item_id")
    frame = frame[list(PAIR_COLUMNS)].apply(lambda column: column.str.strip())
    if frame.empty:
        raise DataError(f"{option} {path} has no rows")
    empty = int((frame == "").any(axis=1).sum())
    if empty:
        raise DataError(f"{option} {path} has {empty} row(s) with an empty user_id or item_id")
    return frame.reset_index(drop=True)


def _unknown(values: pd.Series, known: dict[str, int], what: str) -> str | None:
    missing = values[~values.isin(known.keys())].unique()
    if len(missing) == 0:
        return None
    shown = ", ".join(repr(v) for v in missing[:_SHOWN_UNKNOWN])
    return f"{len(missing)} {what}(s) unknown to the run ({shown}{', ...' if len(missing) > _SHOWN_UNKNOWN else ''})"


def internal_ids(pairs: pd.DataFrame, ids: RawIds, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Internal (user, item) ids (N,), (N,) of raw-id ``pairs``.

    Raises:
        DataError: one line with the unknown users and items (count, up to ten of each).
    """
    problems = [p for p in (_unknown(pairs["user_id"], ids.users, "user_id"),
                            _unknown(pairs["item_id"], ids.items, "item_id")) if p]
    if problems:
        raise DataError(f"{source}: {'; '.join(problems)}; only users and items of the run's data can be scored")
    return (pairs["user_id"].map(ids.users).to_numpy(np.int64), pairs["item_id"].map(ids.items).to_numpy(np.int64))


def pair_rows(ds: Dataset, users: np.ndarray, items: np.ndarray) -> pd.DataFrame:
    """Prompt rows (``user``, ``item``, ``label``, ``history``, ``cold``) for internal-id pairs, by the module's
    history rule; ``label`` is 0 (unknown; prompts at inference carry no answer).

    ``cold``: the user or the item has no train interaction (the dataset's cold flag), so its MF vectors were never
    trained and stage 3 leans on the ``<Warm_ID>`` text token.
    """
    inter = ds.interactions
    held = dict(zip(zip(inter["user"].tolist(), inter["item"].tolist()), inter["history"]))   # the last one wins
    positives = inter[inter["label"] == 1].groupby("user")["item"].agg(list)
    history_len = ds.config.history_len
    histories = [list(held[key]) if key in held else list(positives.get(key[0], []))[-history_len:]
                 for key in zip(users.tolist(), items.tolist())]
    train = inter[inter["split"] == "train"]
    cold = ~(pd.Series(users).isin(train["user"]).to_numpy() & pd.Series(items).isin(train["item"]).to_numpy())
    return pd.DataFrame({"user": users, "item": items, "label": np.zeros(len(users), dtype=np.int8),
                         "history": histories, "cold": cold.astype(np.int8)})


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` as csv through a temporary file and a rename."""
    write_text_atomic(Path(path), frame.to_csv(index=False))


class Predictor:
    """A run's final model, rebuilt once, that scores any number of pair sets.

    Args:
        arts: the run's artifacts (:func:`~sellarec.run_artifacts.artifacts_from_run` or
            :func:`~sellarec.bundle.load_bundle`).
    """

    def __init__(self, arts: RunArtifacts) -> None:
        self.arts = arts
        configure_threads(arts.cfg.runtime)
        self.trained = restore_final_model(arts.cfg, arts.ds, arts.folders, cache_root(arts.cfg.runtime))

    @property
    def stage(self) -> str:
        """The final stage that scores: 'stage1', 'stage2' or 'stage3' (the output's ``model`` column)."""
        return self.trained.stage

    def score_rows(self, rows: pd.DataFrame) -> np.ndarray:
        """Scores (N,) in [0, 1] of prompt rows (:func:`pair_rows`, or the dataset's own rows), in their order."""
        from sellarec.stages import stage1, stage2, stage3

        cfg, ds, t = self.arts.cfg, self.arts.ds, self.trained
        progress, max_length = cfg.runtime.progress, cfg.backbone.max_length
        if t.stage == "stage2":
            logits = stage2.score_logits(t.mf, rows, MF_BATCH_SIZE, torch.device("cpu"))
            return torch.sigmoid(torch.from_numpy(logits)).numpy()
        if t.stage == "stage1":
            return stage1.score_rows(t.model, cfg.eval, ds, t.backbone, rows, max_length=max_length,
                                     progress=progress, split="predict")
        return stage3.score_rows(cfg.stage3, cfg.eval, ds, t.backbone, t.model, t.injector, rows,
                                 max_length=max_length, progress=progress, split="predict")

    def score(self, pairs: pd.DataFrame, source: str = "pairs") -> pd.DataFrame:
        """Score raw-id pairs.

        Args:
            pairs: ``user_id``, ``item_id`` as the data writes them (:func:`read_pairs`).
            source: names the pairs in errors (the csv path).

        Returns:
            ``user_id, item_id, score, model, cold`` in the order of ``pairs``.

        Raises:
            DataError: a user or item the run's data does not hold.
        """
        users, items = internal_ids(pairs, self.arts.ids, source)
        rows = pair_rows(self.arts.ds, users, items)
        return pd.DataFrame({"user_id": pairs["user_id"].to_numpy(), "item_id": pairs["item_id"].to_numpy(),
                             "score": self.score_rows(rows).astype(np.float64), "model": self.stage,
                             "cold": rows["cold"].to_numpy()})

    def top_k(self, candidates: pd.DataFrame, k: int, source: str = "candidates") -> pd.DataFrame:
        """Each user's ``k`` best-scored candidate items (fewer when the user has fewer candidates).

        Returns:
            ``user_id, rank, item_id, score, model, cold``: users in order of first appearance, then rank 1..k by
            descending score (ties keep the candidates' order); repeated (user, item) candidates count once.
        """
        if k < 1:
            raise ConfigError(f"--top-k {k} must be at least 1")
        candidates = candidates.drop_duplicates(list(PAIR_COLUMNS)).reset_index(drop=True)
        scored = self.score(candidates, source)
        scored["user_order"] = pd.factorize(scored["user_id"])[0]
        scored["order"] = np.arange(len(scored))
        ranked = scored.sort_values(["user_order", "score", "order"], ascending=[True, False, True], kind="stable")
        ranked["rank"] = ranked.groupby("user_order").cumcount() + 1
        ranked = ranked[ranked["rank"] <= k]
        return ranked[["user_id", "rank", "item_id", "score", "model", "cold"]].reset_index(drop=True)
