"""The staged SeLLa-Rec run: stage 1 (LoRA SFT) -> stage 2 (distillation + aligned MF) -> stage 3 (ID tokens).

Every stage's artifact lives in the shared :class:`~sellarec.cache.StageCache` under a key derived from the config
fields it reads, the data fingerprint, the backbone, the upstream stages' keys and the stage's code version; runs
and trials that agree on those reuse it. The run folder gets ``config.yaml`` and ``metrics.json`` (per stage: its
metrics, and whether it was a cache hit).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from sellarec.atomic_files import write_json_atomic, write_text_atomic
from sellarec.cache import StageCache
from sellarec.config import SellaConfig, to_dict
from sellarec.data.batches import sample_rows
from sellarec.data.dataset import Dataset, load_dataset
from sellarec.data.prompts import tiny_corpus
from sellarec.errors import DataError
from sellarec.metrics import (COST_COMPUTE_SECONDS, COST_TRAINABLE_PARAMS, SPLIT_METRICS, SPLITS, TRAIN_STEP, cache_key,
                              metric_key, stage_seconds_key)
from sellarec.runtime import cache_root, configure_threads, describe_machine, seed_everything
from sellarec.stages.loop import OnEval

__all__ = ["STAGES", "PipelineResult", "run_pipeline", "nest_metrics", "split_metrics", "flat_metrics",
           "check_trainable", "stage_keys", "stage3_steps", "load_run_backbone", "library_versions", "TrainedModel",
           "final_stages", "restore_final_model"]

log = logging.getLogger(__name__)
STAGES = ("stage1", "stage2", "stage3")
# Bump when a stage's output changes for the same config. Stage 1 and 3 entries hold valid metrics only since
# version 2/3; their test metrics are entries of their own (``stage1_test``, ``stage3_test``) under the same key.
CODE_VERSION = {"stage1": 2, "stage2": 2, "stage3": 3}
TEST_STEPS = {"stage1": "stage1_test", "stage3": "stage3_test"}  # stage -> its on-demand test evaluation


@dataclass
class PipelineResult:
    """Outcome of :func:`run_pipeline`.

    Attributes:
        metrics: what ``<out>/metrics.json`` holds: nested metrics per stage run, ``final`` and ``cache``.
        out_dir: the run folder.
        cache: stage -> 'hit' or 'miss'.
    """

    metrics: dict[str, Any]
    out_dir: Path
    cache: dict[str, str] = field(default_factory=dict)


def split_metrics(stage: dict[str, Any]) -> dict[str, float]:
    """``{split}/{name}`` numbers of one stage's entry of ``metrics.json`` (:data:`~sellarec.metrics.SPLITS` x
    :data:`~sellarec.metrics.SPLIT_METRICS`, where measured)."""
    return {metric_key(split, name): float(stage[split][name]) for split in SPLITS for name in SPLIT_METRICS
            if isinstance(stage.get(split), dict) and stage[split].get(name) is not None}


def check_trainable(ds: Dataset, splits: tuple[str, ...]) -> None:
    """Refuse a dataset whose ``splits`` cannot train or be scored: each needs positive and negative rows (a loss
    on one label teaches nothing, an AUC of one label is undefined).

    Raises:
        DataError: naming the split, its rows per label and the fix.
    """
    for split in splits:
        labels = ds.split(split)["label"]
        positives = int(labels.sum())
        if positives == 0 or positives == len(labels):
            counted = (f"has {positives} positive and {len(labels) - positives} negative rows" if len(labels) else
                       "has no row with an earlier positive to prompt with")
            raise DataError(f"the {split} split of {ds.name} {counted} (a split needs both labels); use more data "
                            "(data.max_users, a larger file) or another label rule (data.positive_rating)")


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a run in the one metric vocabulary (:mod:`sellarec.metrics`), from ``metrics.json``'s layout.

    Returns:
        The final stage's ``{split}/{name}`` (:data:`~sellarec.metrics.SPLITS` x
        :data:`~sellarec.metrics.SPLIT_METRICS`, where measured), ``train/step`` (its optimizer steps, where it has
        any), ``cost/trainable_params``, ``cost/<stage>_seconds`` for every stage that ran and every test scoring
        (``cost/stage3_test_seconds``), ``cost/compute_seconds`` (the stages' training seconds summed, test scoring
        left out: what training the configuration costs, also when it came from the cache) and ``cache/<step>``
        (1 hit, 0 computed).
    """
    final = metrics[metrics["final"]]
    flat = split_metrics(final)
    if "steps" in final:
        flat[TRAIN_STEP] = float(final["steps"])
    if "trainable_params" in final:
        flat[COST_TRAINABLE_PARAMS] = float(final["trainable_params"])
    trained = {stage: float(metrics[stage].get("seconds", 0.0)) for stage in STAGES
               if isinstance(metrics.get(stage), dict)}
    tested = {TEST_STEPS[stage]: float(metrics[stage]["test_seconds"]) for stage in trained
              if stage in TEST_STEPS and "test_seconds" in metrics[stage]}
    flat.update({stage_seconds_key(step): value for step, value in {**trained, **tested}.items()})
    flat[COST_COMPUTE_SECONDS] = math.fsum(trained.values())
    flat.update({cache_key(step): 1.0 if state == "hit" else 0.0 for step, state in metrics.get("cache", {}).items()})
    return flat


def nest_metrics(flat: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"valid/auc": x}`` -> ``{"valid": {"auc": x}}``."""
    nested: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        split, name = key.split("/", 1)
        nested.setdefault(split, {})[name] = value
    return nested


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _needs(cfg: SellaConfig) -> dict[str, bool]:
    """Which stages (and whether the semantic table) a configuration needs."""
    semantic = cfg.stage2.align != "none" or (cfg.final_stage == "stage3" and "warm" in cfg.stage3.tokens)
    return {"stage1": cfg.final_stage != "stage2" or semantic, "semantic": semantic,
            "stage2": cfg.final_stage != "stage1", "stage3": cfg.final_stage == "stage3"}


def stage_keys(cfg: SellaConfig, data_fingerprint: str) -> dict[str, str]:
    """Cache key of every needed stage: what the stage reads, its upstream keys and its code version.

    ``runtime`` is left out except the seed and the resolved dtype (results depend on them; device, threads and
    cache folder do not). The dtype enters only when it is not float32, so float32 keys stay what they were before
    it was added and existing caches remain valid.
    """
    from sellarec.models.backbone import resolve_device_dtype

    needs = _needs(cfg)
    common = {"data": data_fingerprint, "eval": to_dict(cfg.eval), "seed": cfg.runtime.seed}
    dtype = resolve_device_dtype(cfg.runtime.device, cfg.runtime.dtype)[1]
    if dtype != torch.float32:
        common["dtype"] = str(dtype).removeprefix("torch.")
    llm = {"backbone": to_dict(cfg.backbone), "data_render": to_dict(cfg.data)}
    keys: dict[str, str] = {}
    if needs["stage1"]:
        keys["stage1"] = _hash("stage1", CODE_VERSION["stage1"], common, llm, to_dict(cfg.stage1))
    if needs["stage2"] or needs["stage3"]:
        upstream = keys["stage1"] if needs["semantic"] else None
        keys["stage2"] = _hash("stage2", CODE_VERSION["stage2"], common, upstream, needs["semantic"],
                               to_dict(cfg.stage2))
    if needs["stage3"]:
        keys["stage3"] = _hash("stage3", CODE_VERSION["stage3"], common, llm, keys["stage1"], keys["stage2"],
                               _without_legacy_defaults(to_dict(cfg.stage3), STAGE3_ADDED_FIELDS))
    return keys


# Fields added to a stage's config after caches existed, with the value that reproduces the code before them. At that
# value a field stays out of the key, so every entry computed before the field was added keeps its key.
STAGE3_ADDED_FIELDS: dict[tuple[str, ...], Any] = {("collab_projector", "activation"): "gelu"}


def _without_legacy_defaults(section: dict[str, Any], added: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    """``section`` minus every added field that holds its pre-addition value."""
    out = copy.deepcopy(section)
    for path, legacy in added.items():
        parent = out
        for part in path[:-1]:
            parent = parent.get(part, {})
        if parent.get(path[-1], legacy) == legacy:
            parent.pop(path[-1], None)
    return out


def stage3_steps(cfg: SellaConfig) -> int:
    """Optimizer steps stage 3 will take (:func:`~sellarec.stages.loop.optimizer_steps` of its training prompts).

    Reads the processed dataset from the cache (a fraction of a second) for the number of training rows.
    """
    from sellarec.stages.loop import optimizer_steps

    s3 = cfg.stage3
    rows = len(load_dataset(cfg.data, cache_root(cfg.runtime)).split("train"))
    examples = min(rows, s3.max_train_samples) if s3.max_train_samples is not None else rows
    return optimizer_steps(examples, s3.batch_size, s3.grad_accum, s3.epochs)


def load_run_backbone(cfg: SellaConfig, ds: Dataset, cache_dir: Path):
    """The configured backbone (the ``tiny`` one trains its tokenizer on this dataset's titles and prompts)."""
    from sellarec.models.backbone import load_backbone

    corpus = tiny_corpus(ds.titles, ds.item_word) if cfg.backbone.name == "tiny" else None
    return load_backbone(cfg.backbone.name, cache_dir=cache_dir, device=cfg.runtime.device, dtype=cfg.runtime.dtype,
                         tiny_corpus=corpus, seed=cfg.runtime.seed)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a stage artifact depends on (sellarec, torch, transformers, peft)."""
    import peft
    import transformers

    from sellarec import __version__
    return {"sellarec": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}


def _save(folder: Path, tensors: dict[str, dict[str, torch.Tensor]], metrics: dict) -> None:
    for name, state in tensors.items():
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / f"{name}.safetensors"))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))


class _Run:
    """The objects one pipeline run builds lazily and shares between stages."""

    def __init__(self, cfg: SellaConfig, ds: Dataset, cache_dir: Path) -> None:
        self.cfg, self.ds, self.cache_dir = cfg, ds, cache_dir
        self.backbone = None
        self.model = None  # the backbone wrapped with the stage-1 adapter
        self.trained_stage3 = None  # (injector, model) when stage 3 ran in this process
        rt = cfg.runtime
        self.valid_rows = sample_rows(ds.split("valid"), cfg.eval.max_valid_samples, rt.seed)
        self.test_rows = sample_rows(ds.split("test"), cfg.eval.max_test_samples, rt.seed + 1)

    def load_backbone(self):
        if self.backbone is None:
            seed_everything(self.cfg.runtime.seed)
            self.backbone = load_run_backbone(self.cfg, self.ds, self.cache_dir)
        return self.backbone


def _load_stage1(run: _Run, folder: Path) -> None:
    """Wrap the backbone with the cached stage-1 adapter (frozen) as ``run.model``."""
    from sellarec.models.lora import attach_lora, load_adapter_state

    run.model = attach_lora(run.load_backbone().model, run.cfg.stage1.lora, trainable=False)
    load_adapter_state(run.model, load_file(str(folder / "adapter.safetensors")))
    run.model.eval()


def _stage1(run: _Run, scratch: Path, on_eval: OnEval | None) -> dict:
    """Train stage 1 into ``scratch``; leaves the trained model in ``run.model``; returns the meta."""
    from sellarec.stages import stage1

    cfg = run.cfg
    backbone = run.load_backbone()
    seed_everything(cfg.runtime.seed + 1)
    out = stage1.run(cfg.stage1, cfg.eval, run.ds, backbone, valid_rows=run.valid_rows, test_rows=run.test_rows,
                     max_length=cfg.backbone.max_length, seed=cfg.runtime.seed + 1, progress=cfg.runtime.progress,
                     on_eval=on_eval)
    run.model = out.model
    metrics = {**nest_metrics(out.metrics), "trainable_params": sum(v.numel() for v in out.adapter.values()),
               "best_step": out.best_step, "steps": out.steps, "train_samples": out.train_samples,
               "truncated_prompts": out.truncated, "seconds": round(out.seconds, 2), "history": out.history}
    _save(scratch, {"adapter": out.adapter}, metrics)
    return {"config": to_dict(cfg.stage1), "seconds": metrics["seconds"]}


def _stage2(run: _Run, scratch: Path, semantic_needed: bool) -> dict:
    from sellarec.stages.stage2 import train_collab
    from sellarec.stages.distill import distill_items

    cfg, start = run.cfg, time.perf_counter()
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    semantic = None
    if semantic_needed:
        semantic = distill_items(cfg.stage2, run.ds, run.load_backbone(), run.model, progress=cfg.runtime.progress)
        tensors["semantic"] = {"table": semantic}
    distill_seconds = time.perf_counter() - start
    seed_everything(cfg.runtime.seed + 2)
    device = run.backbone.device if run.backbone is not None else "cpu"
    collab = train_collab(cfg.stage2, run.ds, semantic if cfg.stage2.align != "none" else None,
                          seed=cfg.runtime.seed + 2, device=device,
                          report_rows={"valid": run.valid_rows, "test": run.test_rows},
                          bootstrap_samples=cfg.eval.bootstrap_samples)
    tensors["mf"] = collab.model.state_dict()
    align = {"before": collab.align["cos_before"], "after": collab.align["cos_after"]} if collab.align else None
    trainable = sum(p.numel() for p in collab.model.parameters() if p.requires_grad)
    metrics = {**nest_metrics(collab.metrics), "align": align, "trainable_params": trainable,
               "best_epoch": collab.best_epoch,
               "epochs_run": collab.epochs_run, "distill_seconds": round(distill_seconds, 2),
               "mf_seconds": round(collab.seconds, 2), "seconds": round(time.perf_counter() - start, 2)}
    _save(scratch, tensors, metrics)
    return {"config": to_dict(cfg.stage2), "seconds": metrics["seconds"]}


def _load_mf(run: _Run, folder: Path):
    from sellarec.models.mf import AlignedMF

    state = load_file(str(folder / "mf.safetensors"))
    semantic_path = folder / "semantic.safetensors"
    semantic = load_file(str(semantic_path))["table"] if semantic_path.is_file() else None
    mf = AlignedMF(run.ds.num_users, run.ds.num_items, run.cfg.stage2.emb_dim,
                   semantic=state.get("item_sem.weight"), proj_hidden=run.cfg.stage2.proj_hidden)
    mf.load_state_dict(state)
    return mf, semantic


def _stage3(run: _Run, stage2_folder: Path, scratch: Path, on_eval: OnEval | None) -> dict:
    from sellarec.stages import stage3

    cfg = run.cfg
    mf, semantic = _load_mf(run, stage2_folder)
    seed_everything(cfg.runtime.seed + 3)
    out = stage3.run(cfg.stage3, cfg.eval, run.ds, run.load_backbone(), run.model, mf, semantic,
                     valid_rows=run.valid_rows, test_rows=run.test_rows, max_length=cfg.backbone.max_length,
                     seed=cfg.runtime.seed + 3, progress=cfg.runtime.progress, on_eval=on_eval)
    run.trained_stage3 = (out.injector, out.model)
    metrics = {**nest_metrics(out.metrics), "trainable_params": out.trainable_params, "best_step": out.best_step,
               "steps": out.steps, "train_samples": out.train_samples, "seconds": round(out.seconds, 2),
               "history": out.history}
    tensors = {"injector": out.injector.state_dict()}
    if out.adapter is not None:
        tensors["adapter"] = out.adapter
    _save(scratch, tensors, metrics)
    return {"config": to_dict(cfg.stage3), "seconds": metrics["seconds"]}


def _test_metrics(out: dict[str, float], start: float) -> dict:
    return {**nest_metrics(out), "seconds": round(time.perf_counter() - start, 2)}


def _stage1_test(run: _Run, scratch: Path) -> dict:
    """Score the stage-1 model (``run.model``) on the test rows into ``scratch``."""
    from sellarec.stages import stage1

    cfg, start = run.cfg, time.perf_counter()
    out = stage1.evaluate_test(run.model, cfg.eval, run.ds, run.load_backbone(), test_rows=run.test_rows,
                               max_length=cfg.backbone.max_length, seed=cfg.runtime.seed + 1,
                               progress=cfg.runtime.progress)
    metrics = _test_metrics(out, start)
    (scratch / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return {"seconds": metrics["seconds"]}


def _restore_stage3(run: _Run, stage2_folder: Path, stage3_folder: Path) -> None:
    """Rebuild the saved stage 3 as ``run.trained_stage3`` unless this process trained it (needs ``run.model``)."""
    from sellarec.stages import stage3

    backbone = run.load_backbone()
    if run.trained_stage3 is None:
        mf, semantic = _load_mf(run, stage2_folder)
        adapter_path = stage3_folder / "adapter.safetensors"
        run.trained_stage3 = stage3.restore(
            run.cfg.stage3, backbone, run.model, mf, semantic,
            load_file(str(stage3_folder / "injector.safetensors")),
            load_file(str(adapter_path)) if adapter_path.is_file() else None, seed=run.cfg.runtime.seed + 3)


def _stage3_test(run: _Run, stage2_folder: Path, stage3_folder: Path, scratch: Path) -> dict:
    """Score the trained stage 3 (this process's, or the cached one rebuilt) on the test rows into ``scratch``."""
    from sellarec.stages import stage3

    cfg, start = run.cfg, time.perf_counter()
    backbone = run.load_backbone()
    _restore_stage3(run, stage2_folder, stage3_folder)
    injector, model = run.trained_stage3
    out = stage3.evaluate_test(cfg.stage3, cfg.eval, run.ds, backbone, model, injector, test_rows=run.test_rows,
                               max_length=cfg.backbone.max_length, seed=cfg.runtime.seed + 3,
                               progress=cfg.runtime.progress)
    metrics = _test_metrics(out, start)
    (scratch / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return {"seconds": metrics["seconds"]}


@dataclass
class TrainedModel:
    """The final model of a finished run, rebuilt from its saved stage artifacts, in eval mode.

    Attributes:
        stage: the final stage that scores ('stage1', 'stage2' or 'stage3').
        backbone: the loaded LLM backbone; None for stage 2 (MF needs no LLM).
        model: the LLM that scores (stage 1's adapter-wrapped model, or stage 3's); None for stage 2.
        injector: stage 3's ID-token injector, else None.
        mf: stage 2's MF model when stage 2 is final, else None.
    """

    stage: str
    backbone: Any = None
    model: Any = None
    injector: Any = None
    mf: Any = None


def final_stages(cfg: SellaConfig) -> tuple[str, ...]:
    """The stages whose artifacts the final model is rebuilt from (:func:`restore_final_model`)."""
    return {"stage1": ("stage1",), "stage2": ("stage2",), "stage3": STAGES}[cfg.final_stage]


def restore_final_model(cfg: SellaConfig, ds: Dataset, folders: dict[str, Path], cache_dir: Path) -> TrainedModel:
    """Rebuild ``cfg.final_stage``'s model from the artifact folders of :func:`final_stages`, as the test
    evaluation rebuilds a cached stage (same loaders, same seeds).

    Args:
        cfg: the run's configuration.
        ds: its dataset (sizes; the ``tiny`` backbone's tokenizer corpus).
        folders: stage -> a folder holding that stage's artifact files (a cache entry, or a bundle's copy).
        cache_dir: where the backbone is built or found (``<cache_dir>/backbones``).
    """
    run = _Run(cfg, ds, cache_dir)
    if cfg.final_stage == "stage2":
        mf, _ = _load_mf(run, folders["stage2"])
        return TrainedModel("stage2", mf=mf.eval())
    _load_stage1(run, folders["stage1"])
    if cfg.final_stage == "stage1":
        return TrainedModel("stage1", backbone=run.backbone, model=run.model)
    _restore_stage3(run, folders["stage2"], folders["stage3"])
    injector, model = run.trained_stage3
    return TrainedModel("stage3", backbone=run.backbone, model=model, injector=injector)


def run_pipeline(cfg: SellaConfig, out_dir: Path, *, on_eval: OnEval | None = None,
                 evaluate_test: bool = True) -> PipelineResult:
    """Run the stages ``cfg.final_stage`` needs, through the shared stage cache, and write the run folder.

    Args:
        cfg: the run's configuration.
        out_dir: run folder (``config.yaml``, ``metrics.json``).
        on_eval: called with intermediate validation metrics and the step (Tune's report in a trial).
        evaluate_test: score the LLM stages on the test rows too (each a cache entry of its own); a sweep, which
            selects on valid, passes False and skips that cost. Stage 2's MF is always scored (seconds).
    """
    out_dir = Path(out_dir).resolve()
    configure_threads(cfg.runtime)
    cache_dir = cache_root(cfg.runtime)
    # Configuration and data are checked before the run folder exists: rejected input leaves nothing behind.
    ds = load_dataset(cfg.data, cache_dir)
    check_trainable(ds, ("train", "valid", "test") if evaluate_test else ("train", "valid"))
    needs, keys = _needs(cfg), stage_keys(cfg, ds.fingerprint)   # resolves the device: a missing GPU fails here
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    store = StageCache(cache_dir)
    run = _Run(cfg, ds, cache_dir)
    result = PipelineResult(metrics={"final": cfg.final_stage, "cache": {}, "keys": keys}, out_dir=out_dir)
    # The machine is recorded, not keyed: entries are shared across machines, but bits differ across CPU kernel sets.
    common_meta = {"data": ds.fingerprint, "backbone": cfg.backbone.name, "versions": library_versions(),
                   "machine": describe_machine()}

    def stage(name: str, compute: Callable[[Path], dict], load: Callable[[Path], None] | None) -> Path:
        upstream = {k: v for k, v in keys.items() if STAGES.index(k) < STAGES.index(name)}
        if name == "stage2" and not needs["semantic"]:
            upstream = {}  # MF without alignment reads nothing from the LLM
        folder, hit = store.get_or_compute(
            name, keys[name], lambda scratch: {**common_meta, "upstream": upstream, **compute(scratch)})
        if hit and load is not None:
            load(folder)
        result.cache[name] = "hit" if hit else "miss"
        result.metrics["cache"] = dict(result.cache)
        result.metrics[name] = json.loads((folder / "metrics.json").read_text())
        write_json_atomic(out_dir / "metrics.json", result.metrics)
        log.info("%s: %s (%s)", name, "cache hit" if hit else "computed", folder)
        return folder

    def test_step(name: str, compute: Callable[[Path], dict]) -> None:
        """The test evaluation of stage ``name``: its own entry, under the stage's key, merged into its metrics."""
        step = TEST_STEPS[name]
        folder, hit = store.get_or_compute(step, keys[name], lambda scratch: {**common_meta, **compute(scratch)})
        result.cache[step] = "hit" if hit else "miss"
        result.metrics["cache"] = dict(result.cache)
        test = json.loads((folder / "metrics.json").read_text())
        result.metrics[name] = {**result.metrics[name], **{k: v for k, v in test.items() if k != "seconds"},
                                "test_seconds": test["seconds"]}
        write_json_atomic(out_dir / "metrics.json", result.metrics)

    if needs["stage1"]:
        stage("stage1", lambda scratch: _stage1(run, scratch, on_eval), lambda folder: _load_stage1(run, folder))
        if evaluate_test:
            test_step("stage1", lambda scratch: _stage1_test(run, scratch))
    if "stage2" in keys:
        folder2 = stage("stage2", lambda scratch: _stage2(run, scratch, needs["semantic"]), None)
    if needs["stage3"]:
        folder3 = stage("stage3", lambda scratch: _stage3(run, folder2, scratch, on_eval), None)
        if evaluate_test:
            test_step("stage3", lambda scratch: _stage3_test(run, folder2, folder3, scratch))
    return result
