"""What scoring with a finished run needs, gathered once: its configuration, its processed dataset, the maps from
the data's raw ids to the internal ones, and the folders of the stage artifacts its final model is rebuilt from.

A run folder's artifacts come from the stage cache (:func:`artifacts_from_run`); an exported bundle carries its own
(:mod:`sellarec.bundle`). Both give the same :class:`RunArtifacts`, which :mod:`sellarec.predict` scores with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sellarec.cache import StageCache, entry_problem
from sellarec.config import DataConfig, SellaConfig, apply_overrides, from_dict, read_yaml
from sellarec.data.dataset import Dataset, load_dataset
from sellarec.data.protocol import DEFAULT_POSITIVE_RATING, apply_protocol, subsample_users
from sellarec.data.readers import read_raw
from sellarec.errors import DataError
from sellarec.pipeline import final_stages, stage_keys
from sellarec.runtime import cache_root

__all__ = ["RawIds", "RunArtifacts", "raw_ids", "read_run", "artifacts_from_run", "artifacts_from_config",
           "runtime_overrides"]


@dataclass(frozen=True)
class RawIds:
    """Raw ids as the data files write them (strings) -> internal ids (1..N, :mod:`sellarec.data.protocol`).

    Attributes:
        users: raw user id -> internal user id.
        items: raw item id -> internal item id.
    """

    users: dict[str, int]
    items: dict[str, int]

    def to_json(self) -> str:
        """The maps as JSON (``{"users": {...}, "items": {...}}``)."""
        return json.dumps({"users": self.users, "items": self.items})

    @classmethod
    def from_json(cls, text: str) -> RawIds:
        """Read the maps written by :meth:`to_json`."""
        values = json.loads(text)
        return cls({str(k): int(v) for k, v in values["users"].items()},
                   {str(k): int(v) for k, v in values["items"].items()})


@dataclass(frozen=True)
class RunArtifacts:
    """Everything :class:`~sellarec.predict.Predictor` needs to score with a finished run.

    Attributes:
        cfg: the run's resolved configuration (runtime settings may be overridden for scoring).
        ds: its processed dataset (titles and histories the prompts are built from).
        ids: raw -> internal id maps of its data.
        folders: stage -> artifact folder, for each stage of :func:`~sellarec.pipeline.final_stages`.
        metrics: the run's ``metrics.json``.
        source: the run folder or bundle it came from (for messages).
    """

    cfg: SellaConfig
    ds: Dataset
    ids: RawIds
    folders: dict[str, Path]
    metrics: dict[str, Any]
    source: Path


def raw_ids(cfg: DataConfig, ds: Dataset) -> RawIds:
    """The raw -> internal id maps of ``ds``, re-derived from its source files.

    The processed data keeps only internal ids, so the raw frame goes through the same protocol call again with
    the raw ids carried along as extra columns (:func:`~sellarec.data.protocol.apply_protocol` keeps them); the
    result must reproduce ``ds``'s ids row for row.

    Raises:
        DataError: the source files are missing, or they no longer give ``ds``'s ids.
    """
    raw = subsample_users(read_raw(cfg), cfg.max_users, cfg.sample_seed)
    raw = raw.assign(raw_user=raw["user"].astype(str), raw_item=raw["item"].astype(str))
    positive = cfg.positive_rating if cfg.positive_rating is not None else DEFAULT_POSITIVE_RATING[cfg.dataset]
    frame, _ = apply_protocol(raw, positive, cfg.history_len)
    if not (np.array_equal(frame["user"], ds.interactions["user"])
            and np.array_equal(frame["item"], ds.interactions["item"])):
        raise DataError(f"the {cfg.dataset} source files no longer give the processed data's ids (fingerprint "
                        f"{ds.fingerprint}); clear the data cache entry and retrain")
    users = frame.drop_duplicates("user")
    items = frame.drop_duplicates("item")
    return RawIds(dict(zip(users["raw_user"], users["user"].astype(int))),
                  dict(zip(items["raw_item"], items["item"].astype(int))))


def runtime_overrides(cfg: SellaConfig, *, cache_dir: Path | None = None, device: str | None = None) -> SellaConfig:
    """``cfg`` with the scoring machine's cache folder and device, where given."""
    overrides = {"runtime.cache_dir": None if cache_dir is None else str(cache_dir), "runtime.device": device}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return apply_overrides(cfg, overrides) if overrides else cfg


def read_run(run_dir: Path) -> tuple[SellaConfig, dict[str, Any]]:
    """A finished run folder's configuration and metrics.

    Raises:
        DataError: no ``metrics.json``/``config.yaml``, or the final stage has not finished.
    """
    from sellarec.run_table import load_run

    metrics = load_run(run_dir)["metrics"]
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise DataError(f"{run_dir} has no config.yaml; pass a folder written by `sellarec train --out`")
    return from_dict(read_yaml(config_path, "run config")), metrics


def _cache_folder(store: StageCache, run_dir: Path, stage: str, key: str, fingerprint: str) -> Path:
    """The intact cache entry of ``stage`` under ``key``, trained on data ``fingerprint``."""
    folder = store.lookup(stage, key)
    if folder is None:
        raise DataError(f"run {run_dir}: its {stage} artifact {key} is not in the stage cache {store.root}; pass "
                        "--cache-dir with the cache it trained with, or rerun its train command")
    problem = entry_problem(folder)
    if problem is not None:
        raise DataError(f"run {run_dir}: its {stage} artifact {folder} is broken ({problem}); rerun its train "
                        "command to compute it again")
    trained_on = json.loads((folder / "meta.json").read_text()).get("data")
    if trained_on is not None and trained_on != fingerprint:
        raise DataError(f"run {run_dir}: {stage} was trained on data fingerprint {trained_on} but the local "
                        f"data gives {fingerprint}; restore the data it trained on, or predict with a bundle "
                        "exported from the run")
    return folder


def artifacts_from_run(run_dir: Path, *, cache_dir: Path | None = None, device: str | None = None) -> RunArtifacts:
    """A finished run folder's artifacts, from the stage cache (the config's, or ``cache_dir``).

    The stage entries are the ones the run recorded in ``metrics.json`` (``keys``; recomputed from the config for
    runs that predate it), checked intact and trained on the local data.

    Raises:
        DataError: unfinished run, missing or broken entry, data that differs from the data it trained on.
    """
    run_dir = Path(run_dir)
    cfg, metrics = read_run(run_dir)
    return artifacts_from_config(cfg, metrics, run_dir, cache_dir=cache_dir, device=device)


def artifacts_from_config(cfg: SellaConfig, metrics: dict[str, Any], source: Path | str, *,
                          cache_dir: Path | None = None, device: str | None = None) -> RunArtifacts:
    """The artifacts of a finished run given by its configuration and metrics (a run folder's, or a sweep trial's
    from MLflow), from the stage cache under ``metrics["keys"]`` or, without them, the keys ``cfg`` gives.

    Raises:
        DataError: a missing or broken entry, data that differs from the data it trained on.
    """
    run_dir = source if isinstance(source, Path) else Path(str(source))
    cfg = runtime_overrides(cfg, cache_dir=cache_dir, device=device)
    root = cache_root(cfg.runtime)
    ds = load_dataset(cfg.data, root)
    keys = metrics.get("keys") or stage_keys(cfg, ds.fingerprint)
    store = StageCache(root)
    folders = {stage: _cache_folder(store, run_dir, stage, keys[stage], ds.fingerprint)
               for stage in final_stages(cfg)}
    return RunArtifacts(cfg, ds, raw_ids(cfg.data, ds), folders, metrics, run_dir)
