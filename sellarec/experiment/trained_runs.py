"""A sweep trial or ablation run, found by its MLflow run id, as something to score with: its resolved configuration
(the ``config.yaml`` artifact every trial logs) and its final metrics. The stages themselves come from the stage
cache under the keys that configuration gives (:func:`sellarec.run_artifacts.artifacts_from_config`)."""

from __future__ import annotations

from typing import Any

import yaml

from sellarec.config import SellaConfig, from_dict
from sellarec.errors import DataError
from sellarec.experiment.tracking import FINISHED, client_for
from sellarec.pipeline import nest_metrics

__all__ = ["mlflow_run_config"]


def mlflow_run_config(tracking_uri: str, run_id: str) -> tuple[SellaConfig, dict[str, Any]]:
    """The configuration and metrics (``{"valid": {"auc": ...}, ...}``) of the FINISHED run ``run_id``.

    Raises:
        DataError: no such run in the store, a run that did not finish, or one without a ``config.yaml`` artifact.
    """
    from mlflow.exceptions import MlflowException

    client = client_for(tracking_uri)
    where = f"--mlflow-run {run_id} in {tracking_uri}"
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise DataError(f"{where}: no such run; copy a trial's run id from the MLflow UI (make ui) or the sweep "
                        "report, and pass the store it is in with --tracking-uri") from None
    if run.info.status != FINISHED:
        raise DataError(f"{where}: the run is {run.info.status}, not FINISHED; score with a trial that finished")
    try:
        text = client.download_artifacts(run_id, "config.yaml")
    except (MlflowException, OSError):
        raise DataError(f"{where}: the run has no config.yaml artifact (a sweep's parent run, or not a sellarec "
                        "trial); pass a trial's run id") from None
    with open(text, encoding="utf-8") as handle:
        cfg = from_dict(yaml.safe_load(handle))
    flat = {k: v for k, v in run.data.metrics.items() if "/" in k}
    return cfg, {"final": cfg.final_stage, **nest_metrics(flat)}
