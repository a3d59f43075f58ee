"""Tables of finished runs from their metrics.json, in the metric vocabulary of :mod:`sellarec.metrics`: side by
side (``python -m sellarec compare RUN_DIR ...``) and per stage (what ``sellarec train`` prints)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from sellarec.errors import DataError
from sellarec.metrics import COST_TRAINABLE_PARAMS, MIN_SLICE_ROWS, metric_key, stage_seconds_key

__all__ = ["load_run", "runs_markdown", "stages_table", "model_label"]

STAGE_NAMES = {"stage1": "LLM (stage 1, TALLRec-style)", "stage2": "MF (stage 2)",
               "stage3": "LLM + ID tokens (stage 3)"}


def model_label(final: str, config: dict[str, Any]) -> str:
    """What a run's final model is, from its resolved config (a run folder does not record its preset's name):
    ``LLM + ID tokens (stage 3: user, item, warm)``, with ``, MF frozen`` when stage 3 trains no MF table."""
    if final != "stage3" or "stage3" not in config:
        return STAGE_NAMES[final]
    stage3 = config["stage3"]
    frozen = not stage3.get("train_user_emb", True) and not stage3.get("train_item_emb", True)
    return f"LLM + ID tokens (stage 3: {', '.join(stage3.get('tokens', []))}{', MF frozen' if frozen else ''})"


def load_run(folder: Path) -> dict[str, Any]:
    """``metrics.json`` and ``config.yaml`` facts of a run folder; a missing or unfinished run is a DataError."""
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise DataError(f"{folder} has no metrics.json; pass folders written by `sellarec train --out`")
    metrics = json.loads(path.read_text())
    final = metrics.get("final")
    if final not in metrics:
        raise DataError(f"{folder} has not finished its final stage ({final}); rerun the same train command")
    config_path = Path(folder) / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    return {"name": Path(folder).name, "metrics": metrics, "final": final, "label": model_label(final, config or {})}


def _cell(flat: dict[str, float], split: str, name: str, ci: bool) -> str:
    rows = flat.get(metric_key(split, "rows"))
    if rows is not None and rows < MIN_SLICE_ROWS:
        return f"n/a ({int(rows)} rows)"   # an AUC of a handful of rows is noise (MIN_SLICE_ROWS)
    value = flat.get(metric_key(split, name))
    if value is None or value != value:  # NaN
        return "n/a"
    low, high = flat.get(metric_key(split, f"{name}_ci_low")), flat.get(metric_key(split, f"{name}_ci_high"))
    if ci and low is not None and high is not None:
        return f"{value:.4f} [{low:.3f}, {high:.3f}]"
    return f"{value:.4f}"


def _rows(flat: dict[str, float], split: str) -> str:
    """``1500 (631)``: rows and distinct users (UAUC's eligible users in runs that predate the user count)."""
    users = flat.get(metric_key(split, "users"), flat.get(metric_key(split, "uauc_users")))
    return f"{int(flat.get(metric_key(split, 'rows'), 0))} ({int(users) if users is not None else 'n/a'})"


def runs_markdown(folders: list[Path]) -> str:
    """A markdown table of each run's final-stage metrics (AUCs with their 95% user-bootstrap CI, rows, users)."""
    from sellarec.pipeline import flat_metrics

    runs = [load_run(f) for f in folders]
    header = ("| run | model | valid AUC [95% CI] | valid UAUC | test AUC [95% CI] | test UAUC [95% CI] | warm AUC "
              "| warm UAUC | cold AUC | cold UAUC | valid rows (users) | test rows (users) | warm / cold rows "
              "| trainable params | seconds |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for run in runs:
        m = flat_metrics(run["metrics"])
        params = m.get(COST_TRAINABLE_PARAMS)
        seconds = m.get(stage_seconds_key(run["final"]), float("nan"))
        lines.append(
            f"| {run['name']} | {run['label']} | {_cell(m, 'valid', 'auc', True)} | "
            f"{_cell(m, 'valid', 'uauc', False)} | {_cell(m, 'test', 'auc', True)} | "
            f"{_cell(m, 'test', 'uauc', True)} | {_cell(m, 'test_warm', 'auc', False)} | "
            f"{_cell(m, 'test_warm', 'uauc', False)} | {_cell(m, 'test_cold', 'auc', False)} | "
            f"{_cell(m, 'test_cold', 'uauc', False)} | {_rows(m, 'valid')} | {_rows(m, 'test')} | "
            f"{int(m.get('test_warm/rows', 0))} / {int(m.get('test_cold/rows', 0))} | "
            f"{f'{int(params):,}' if params is not None else 'n/a'} | {seconds:.0f} |")
    return "\n".join(lines) + "\n"


def stages_table(metrics: dict[str, Any]) -> str:
    """The terminal table ``sellarec train`` prints: one row per stage that ran (AUC with its 95% CI, rows and
    users; slices under :data:`~sellarec.metrics.MIN_SLICE_ROWS` rows as n/a), then stage 2's alignment."""
    from sellarec.pipeline import split_metrics

    lines = [f"{'model':<28} {'valid AUC [95% CI] rows/users':<37} {'test AUC [95% CI] rows/users':<37} "
             f"{'test UAUC':>9} {'warm AUC (rows)':<22} {'cold AUC (rows)':<22}"]
    for stage, name in STAGE_NAMES.items():
        if not metrics.get(stage):
            continue
        m = split_metrics(metrics[stage])
        cells = [_cell(m, split, "auc", True) + (f" n={_rows(m, split)}" if metric_key(split, "rows") in m else "")
                 for split in ("valid", "test")]
        slices = [f"{_cell(m, split, 'auc', False)} n={int(m.get(metric_key(split, 'rows'), 0))}"
                  for split in ("test_warm", "test_cold")]
        lines.append(f"{name:<28} {cells[0]:<37} {cells[1]:<37} {_cell(m, 'test', 'uauc', False):>9} "
                     f"{slices[0]:<22} {slices[1]:<22}")
    align = (metrics.get("stage2") or {}).get("align")
    if align:
        lines.append(f"stage2 alignment: mean cosine(Proj(MF item), semantic) {align['before']:.4f} -> "
                     f"{align['after']:.4f}")
    return "\n".join(lines) + "\n"
