"""Side-by-side tables of finished runs (``python -m sellarec compare RUN_DIR ...``), from their metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from sellarec.errors import DataError
from sellarec.metrics import MIN_SLICE_ROWS

__all__ = ["load_run", "runs_markdown", "model_label"]

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


def _cell(split: dict[str, Any], name: str, ci: bool) -> str:
    rows = split.get("rows")
    if isinstance(rows, (int, float)) and rows < MIN_SLICE_ROWS:
        return f"n/a ({int(rows)} rows)"   # an AUC of a handful of rows is noise (MIN_SLICE_ROWS)
    value = split.get(name)
    if value is None or value != value:  # NaN
        return "n/a"
    low, high = split.get(f"{name}_ci_low"), split.get(f"{name}_ci_high")
    if ci and low is not None and high is not None:
        return f"{value:.4f} [{low:.3f}, {high:.3f}]"
    return f"{value:.4f}"


def _rows(split: dict[str, Any]) -> str:
    """``1500 (631)``: rows and distinct users (UAUC's eligible users in runs that predate the user count)."""
    users = split.get("users", split.get("uauc_users"))
    return f"{int(split.get('rows', 0))} ({int(users) if users is not None else 'n/a'})"


def runs_markdown(folders: list[Path]) -> str:
    """A markdown table of each run's final-stage metrics (AUCs with their 95% user-bootstrap CI, rows, users)."""
    runs = [load_run(f) for f in folders]
    header = ("| run | model | valid AUC [95% CI] | valid UAUC | test AUC [95% CI] | test UAUC [95% CI] | warm AUC "
              "| warm UAUC | cold AUC | cold UAUC | valid rows (users) | test rows (users) | warm / cold rows "
              "| trainable params | seconds |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for run in runs:
        m = run["metrics"][run["final"]]
        params = m.get("trainable_params")
        lines.append(
            f"| {run['name']} | {run['label']} | {_cell(m['valid'], 'auc', True)} | "
            f"{_cell(m['valid'], 'uauc', False)} | {_cell(m['test'], 'auc', True)} | {_cell(m['test'], 'uauc', True)} | "
            f"{_cell(m['test_warm'], 'auc', False)} | {_cell(m['test_warm'], 'uauc', False)} | "
            f"{_cell(m['test_cold'], 'auc', False)} | {_cell(m['test_cold'], 'uauc', False)} | "
            f"{_rows(m['valid'])} | {_rows(m['test'])} | "
            f"{int(m['test_warm'].get('rows', 0))} / {int(m['test_cold'].get('rows', 0))} | "
            f"{f'{params:,}' if params is not None else 'n/a'} | {m.get('seconds', float('nan')):.0f} |")
    return "\n".join(lines) + "\n"
