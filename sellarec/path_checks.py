"""Checks of path and URI options before any work starts: one-line :class:`~sellarec.errors.ConfigError` naming the
option and the fix, and nothing left behind (a folder that does not exist yet is proven creatable by creating and
removing a temporary folder in its nearest existing parent, which is the only test that also holds for root, for
read-only mounts and for ``/proc``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from sellarec.errors import ConfigError

__all__ = ["writable_folder", "writable_file", "readable_file", "tracking_uri", "tune_storage", "TRACKING_SCHEMES"]

# Schemes MLflow's tracking store accepts (a plain path is a file store, which MLflow 3 refuses: STACK.md §5).
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
# Remote filesystems pyarrow gives Ray Tune (checked by Tune itself when it first writes).
_REMOTE_STORAGE = ("s3", "gs", "gcs", "hdfs", "abfs", "az", "file")


def _creatable(path: Path, option: str, what: str, shown: Path | None = None) -> None:
    """Raise unless a new entry can be created at ``path`` (its nearest existing parent is a writable folder);
    errors name ``shown`` (default ``path``), the value the user passed."""
    shown = shown or path
    parent = path
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {shown}: {parent} is a file, so no {what} can be made under it; pass another "
                          "path")
    try:
        Path(tempfile.mkdtemp(prefix=".sellarec-check-", dir=parent)).rmdir()
    except OSError as exc:
        raise ConfigError(f"{option} {shown}: cannot write in {parent} ({exc.strerror or exc}); pass a writable "
                          f"{what}") from None


def writable_folder(path: str | Path, option: str) -> Path:
    """``path`` as a folder this process can create or write in.

    Raises:
        ConfigError: it is a file, or neither it nor its nearest existing parent accepts a new entry.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a folder; pass a folder")
    _creatable(path, option, "folder")
    return path


def writable_file(path: str | Path, option: str) -> Path:
    """``path`` as a file this process can (over)write.

    Raises:
        ConfigError: it is a folder, or an existing file that is not writable, or its folder cannot be written.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; pass a file name (e.g. {path / 'report.md'})")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{option} {path} is not writable; pass another file")
    _creatable(path.parent, option, "file", shown=path)
    return path


def readable_file(path: str | Path, option: str) -> Path:
    """``path`` as an existing, readable file.

    Raises:
        ConfigError: it does not exist, is a folder or cannot be read.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; pass a file")
    if not path.is_file():
        raise ConfigError(f"{option} {path} does not exist; check the path")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{option} {path} is not readable; check its permissions")
    return path


def tracking_uri(uri: str, option: str = "--tracking-uri") -> str:
    """An MLflow tracking URI whose scheme MLflow accepts; a sqlite file must be creatable (or be a file).

    Raises:
        ConfigError: another scheme (a plain path included), or a sqlite file that cannot be written.
    """
    scheme = urlparse(uri).scheme
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(f"{option} {uri}: MLflow accepts {', '.join(f'{s}://' for s in TRACKING_SCHEMES)} here; "
                          "pass e.g. sqlite:///mlflow/mlflow.db or http://HOST:PORT")
    if scheme == "sqlite":
        database = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not database or database == ":memory:":
            raise ConfigError(f"{option} {uri}: name a database file, e.g. sqlite:///mlflow/mlflow.db")
        writable_file(database, option)
    return uri


def tune_storage(storage: str, option: str = "--storage") -> str:
    """Ray Tune's storage: a writable local folder, or a URI of a filesystem Tune writes through pyarrow.

    Raises:
        ConfigError: a local path that is a file or cannot be written, or an unknown URI scheme.
    """
    scheme = urlparse(storage).scheme if "://" in storage else ""
    if scheme:
        if scheme not in _REMOTE_STORAGE:
            raise ConfigError(f"{option} {storage}: Ray Tune writes to a folder or to "
                              f"{', '.join(f'{s}://' for s in _REMOTE_STORAGE)}; pass one of those")
        return storage
    writable_folder(storage, option)
    return storage
