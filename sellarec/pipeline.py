"""The staged SeLLa-Rec run: stage 1 (LoRA SFT) -> stage 2 (distillation + aligned MF) -> stage 3.

Each stage writes ``<out>/<stage>/`` (weights, ``meta.json``, ``metrics.json``) atomically; a stage whose
``meta.json`` carries the same key (the config fields it reads, the data fingerprint, the backbone, the upstream
stage's key and the stage's code version) is reused, so a killed run resumes at the first unfinished stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from safetensors.torch import load_file, save_file

from sellarec.config import SellaConfig, to_dict
from sellarec.data.batches import sample_rows
from sellarec.data.dataset import Dataset, load_dataset
from sellarec.data.prompts import stage1_prompt, stage3_prompt, item_words
from sellarec.models.backbone import Backbone, load_backbone
from sellarec.runtime import cache_root, configure_threads, seed_everything
from sellarec.storage import atomic_dir, write_json_atomic, write_text_atomic

__all__ = ["STAGES", "PipelineResult", "run_pipeline", "nest_metrics"]

log = logging.getLogger(__name__)
Stage = Literal["stage1", "stage2"]
STAGES: tuple[Stage, ...] = ("stage1", "stage2")
CODE_VERSION = {"stage1": 1, "stage2": 1}
OnEval = Callable[[dict[str, float], int], None]


@dataclass
class PipelineResult:
    """Outcome of :func:`run_pipeline`.

    Attributes:
        metrics: nested metrics per finished stage (what ``<out>/metrics.json`` holds).
        out_dir: the run folder.
        reused: stages taken from an earlier run instead of computed.
    """

    metrics: dict[str, Any]
    out_dir: Path
    reused: list[str] = field(default_factory=list)


def nest_metrics(flat: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"valid/auc": x}`` -> ``{"valid": {"auc": x}}``."""
    nested: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        split, name = key.split("/", 1)
        nested.setdefault(split, {})[name] = value
    return nested


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tiny_corpus(ds: Dataset) -> list[str]:
    """Texts the tiny backbone's tokenizer is trained on: the titles and every prompt's fixed wording."""
    words = item_words(ds.item_word)
    fixed = [stage1_prompt(words, ["a"], "b", 1), stage3_prompt(words, ["a"], "b", 0, ("user", "item", "warm"))]
    return [t for t in ds.titles if t] + [p.system + " " + p.user for p in fixed] + ["Movie: Book: Item:"]


def _load_stage(folder: Path, key: str) -> dict | None:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    return meta if meta.get("key") == key else None


def _save_stage(folder: Path, meta: dict, metrics: dict, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    if folder.exists():  # an older run of a different key: replaced as a whole
        import shutil
        shutil.rmtree(folder)
    with atomic_dir(folder) as scratch:
        for name, state in tensors.items():
            save_file({k: v.contiguous() for k, v in state.items()}, str(scratch / f"{name}.safetensors"))
        (scratch / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (scratch / "meta.json").write_text(json.dumps(meta, indent=2))  # written last: marks the stage complete


def _versions() -> dict[str, str]:
    import peft
    import transformers

    from sellarec import __version__
    return {"sellarec": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}


def run_pipeline(cfg: SellaConfig, out_dir: Path, *, until: Stage = "stage2",
                 on_eval: OnEval | None = None) -> PipelineResult:
    """Run the stages up to ``until`` into ``out_dir``, reusing finished ones; see the module docstring.

    Returns:
        The nested metrics of every stage run or reused, also written to ``<out_dir>/metrics.json``.
    """
    from sellarec.models.lora import attach_lora, load_adapter_state
    from sellarec.stages import stage1 as stage1_mod
    from sellarec.stages.collab import train_collab
    from sellarec.stages.distill import distill_items

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    rt = cfg.runtime
    configure_threads(rt)
    cache = cache_root(rt)
    progress = rt.progress

    # --- inputs shared by every stage
    ds = load_dataset(cfg.data, cache)
    valid_rows = sample_rows(ds.split("valid"), cfg.eval.max_valid_samples, cfg.eval.max_rows_per_user, rt.seed)
    test_rows = sample_rows(ds.split("test"), cfg.eval.max_test_samples, cfg.eval.max_rows_per_user, rt.seed + 1)
    seed_everything(rt.seed)
    backbone: Backbone = load_backbone(
        cfg.backbone.name, cache_dir=cache, device=rt.device, dtype=rt.dtype,
        tiny_corpus=_tiny_corpus(ds) if cfg.backbone.name == "tiny" else None, seed=rt.seed)
    base = {"data": ds.fingerprint, "backbone": to_dict(cfg.backbone), "eval": to_dict(cfg.eval),
            "seed": rt.seed}
    result = PipelineResult(metrics={}, out_dir=out_dir)

    # --- stage 1: LoRA SFT
    key1 = _key(base, to_dict(cfg.stage1), CODE_VERSION["stage1"])
    folder1 = out_dir / "stage1"
    meta1 = _load_stage(folder1, key1)
    if meta1 is not None:
        model = attach_lora(backbone.model, cfg.stage1.lora, trainable=False)
        load_adapter_state(model, load_file(str(folder1 / "adapter.safetensors")))
        model.eval()
        metrics1 = json.loads((folder1 / "metrics.json").read_text())
        result.reused.append("stage1")
        log.info("stage1 reused from %s", folder1)
    else:
        seed_everything(rt.seed + 1)
        out1 = stage1_mod.run(cfg.stage1, cfg.eval, ds, backbone, valid_rows=valid_rows, test_rows=test_rows,
                              max_length=cfg.backbone.max_length, seed=rt.seed + 1, progress=progress,
                              on_eval=on_eval)
        model = out1.model
        metrics1 = {**nest_metrics(out1.metrics), "steps": out1.steps, "train_samples": out1.train_samples,
                    "truncated_prompts": out1.truncated, "seconds": round(out1.seconds, 2), "history": out1.history}
        _save_stage(folder1, {"key": key1, "stage": "stage1", "config": to_dict(cfg.stage1), "data": ds.fingerprint,
                              "backbone": cfg.backbone.name, "versions": _versions(),
                              "seconds": round(out1.seconds, 2)}, metrics1, {"adapter": out1.adapter})
    result.metrics["stage1"] = metrics1
    _write_metrics(out_dir, result.metrics)
    if until == "stage1":
        return result

    # --- stage 2: semantic distillation (2a) + MF with alignment (2b)
    key2 = _key(key1, to_dict(cfg.stage2), CODE_VERSION["stage2"])
    folder2 = out_dir / "stage2"
    meta2 = _load_stage(folder2, key2)
    if meta2 is not None:
        metrics2 = json.loads((folder2 / "metrics.json").read_text())
        result.reused.append("stage2")
    else:
        start = time.perf_counter()
        semantic = distill_items(cfg.stage2, ds, backbone, model, progress=progress)
        distill_seconds = time.perf_counter() - start
        seed_everything(rt.seed + 2)
        collab = train_collab(cfg.stage2, ds, semantic if cfg.stage2.align != "none" else None, seed=rt.seed + 2,
                              device=backbone.device)
        align = ({"before": collab.align["cos_before"], "after": collab.align["cos_after"]}
                 if collab.align else None)
        metrics2 = {**nest_metrics(collab.metrics), "align": align, "best_epoch": collab.best_epoch,
                    "epochs_run": collab.epochs_run, "distill_seconds": round(distill_seconds, 2),
                    "mf_seconds": round(collab.seconds, 2), "seconds": round(time.perf_counter() - start, 2)}
        _save_stage(folder2, {"key": key2, "stage": "stage2", "upstream": key1, "config": to_dict(cfg.stage2),
                              "data": ds.fingerprint, "versions": _versions(),
                              "seconds": metrics2["seconds"]}, metrics2,
                    {"semantic": {"table": semantic}, "mf": collab.model.state_dict()})
    result.metrics["stage2"] = metrics2
    _write_metrics(out_dir, result.metrics)
    return result


def _write_metrics(out_dir: Path, metrics: dict[str, Any]) -> None:
    write_json_atomic(out_dir / "metrics.json", metrics)
