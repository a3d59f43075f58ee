"""Benchmarks run by hand (``bench/``), never as timed tests. Each reports ratios against a baseline measured in the
same process on the same inputs, plus the machine it ran on."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np
import torch

from sellarec.config import SellaConfig
from sellarec.data.batches import Example, build_examples, collate
from sellarec.data.dataset import Dataset, load_dataset
from sellarec.models.backbone import Backbone
from sellarec.models.mf import AlignedMF
from sellarec.models.lora import attach_lora
from sellarec.pipeline import load_run_backbone
from sellarec.runtime import cache_root, configure_threads, describe_machine
from sellarec.stages import stage3
from sellarec.stages.evaluation import MIN_GROUP_PREFIX, common_prefix_length, group_by_prefix, score_examples

__all__ = ["stage3_step", "eval_speed", "prefix_sharing", "EVAL_VARIANTS"]


def _with_random_adapter(cfg: SellaConfig, seed: int) -> tuple[Dataset, Backbone, torch.nn.Module]:
    """The configured data and backbone wrapped with a frozen stage-1 LoRA whose B is random and non-zero, so that
    an adapter is really on the path (as after stage 1); eval mode, ``runtime.threads`` torch threads."""
    configure_threads(cfg.runtime)
    torch.manual_seed(seed)
    cache = cache_root(cfg.runtime)
    ds = load_dataset(cfg.data, cache)
    backbone = load_run_backbone(cfg, ds, cache)
    model = attach_lora(backbone.model, cfg.stage1.lora, trainable=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return ds, backbone, model.eval()


def _grads(injector: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in injector.named_parameters() if p.grad is not None}


def stage3_step(cfg: SellaConfig, *, batches: int = 3, batch_size: int = 8, seed: int = 0) -> dict[str, Any]:
    """Stage-3 training step, official (pad to max_length, full forward and logits) vs ours, same batches.

    Ours is timed twice: ``fast`` is what training runs (no LM head on the gradient-free prefix), ``fast_exact``
    also computes the prefix's loss terms so that its loss value can be compared with the official one.

    The stage-1 adapter is a fresh LoRA with random non-zero B (frozen); MF tables and the semantic table are random
    with the configured sizes; the model is in eval mode so that no dropout makes the two steps differ. The steps
    alternate batch by batch so that machine noise hits both alike.

    Returns:
        samples/s of each step (median over batches), the speed-ups, the largest relative loss difference
        (official vs fast_exact) and the largest relative gradient difference of either fast step against the
        official one over all trainable tensors (first batch), and the machine.
    """
    ds, backbone, model = _with_random_adapter(cfg, seed)
    semantic = torch.randn(ds.num_items, backbone.hidden_size)
    mf = AlignedMF(ds.num_users, ds.num_items, cfg.stage2.emb_dim, semantic=semantic,
                   proj_hidden=cfg.stage2.proj_hidden)
    injector = stage3.build_injector(cfg.stage3, mf, semantic, backbone, seed=seed)
    rows = ds.split("train").sample(n=batches * batch_size, random_state=seed)
    examples = build_examples(ds, rows, backbone.tokenizer, stage=3, tokens=cfg.stage3.tokens,
                              max_length=cfg.backbone.max_length, with_answer=True)
    variants = ("official", "fast_exact", "fast")
    times: dict[str, list[float]] = {name: [] for name in variants}
    losses: dict[str, list[float]] = {name: [] for name in variants}
    first_grads: dict[str, dict[str, torch.Tensor]] = {}
    for index in range(batches):
        batch = collate(examples[index * batch_size: (index + 1) * batch_size], backbone.tokenizer.pad_token_id)
        for name in variants:
            injector.zero_grad(set_to_none=True)
            start = time.perf_counter()
            if name == "official":
                loss = stage3.official_loss(model, injector, batch, pad_to=cfg.backbone.max_length)
            else:
                loss = stage3.fast_loss(model, injector, batch, exact_value=name == "fast_exact")
            loss.backward()
            times[name].append(time.perf_counter() - start)
            losses[name].append(loss.item())
            if index == 0:
                first_grads[name] = _grads(injector)
    loss_rel = max(abs(a - b) / abs(a) for a, b in zip(losses["official"], losses["fast_exact"]))
    grad_rel = max(float((first_grads[name][k] - g).norm() / g.norm().clamp_min(1e-30))
                   for name in ("fast_exact", "fast") for k, g in first_grads["official"].items())
    rate = {name: batch_size / statistics.median(t) for name, t in times.items()}
    return {"official_samples_per_s": rate["official"], "fast_exact_samples_per_s": rate["fast_exact"],
            "fast_samples_per_s": rate["fast"], "speedup": rate["fast"] / rate["official"],
            "speedup_exact": rate["fast_exact"] / rate["official"], "max_rel_loss_diff": loss_rel,
            "max_rel_grad_diff": grad_rel,
            "losses": losses, "step_seconds": times, "prompt_tokens": [len(e.ids) for e in examples],
            "trainable_params": sum(p.numel() for p in injector.parameters() if p.requires_grad),
            "machine": describe_machine()}


def prefix_sharing(examples: list[Example], stop_tokens: tuple[int, ...] = ()) -> dict[str, int]:
    """How :func:`score_examples` would share prefixes among ``examples`` (no model run).

    Args:
        examples: inference examples.
        stop_tokens: token ids whose input vector is injected (stage 3's ID tokens); a group prefix stops before them.

    Returns:
        rows, the common prefix's length, groups kept (at least ``MIN_GROUP_PREFIX`` tokens past the common prefix
        after the stop), rows in them, the largest group, and the prompt tokens past the common prefix that the
        length-sorted path computes (``tokens``) and that the groups save (``tokens_saved``), padding not counted.
    """
    start = common_prefix_length(examples)
    kept = []
    for group in group_by_prefix(examples, start=start):
        stops = [examples[i].ids.index(t) for i in group.rows for t in stop_tokens if t in examples[i].ids]
        length = min([group.length, *stops])
        if length - start >= MIN_GROUP_PREFIX:
            kept.append((len(group.rows), length))
    return {"rows": len(examples), "common_prefix": start, "groups": len(kept),
            "grouped_rows": sum(size for size, _ in kept), "largest_group": max((size for size, _ in kept), default=0),
            "tokens": sum(len(e.ids) - start for e in examples),
            "tokens_saved": sum((size - 1) * (length - start) for size, length in kept)}


def _check_rows(examples: list[Example], n: int) -> list[int]:
    """About ``n`` example indices for the plain-path check: whole groups first (up to half), then ungrouped ones."""
    groups = group_by_prefix(examples, start=common_prefix_length(examples))
    chosen: list[int] = []
    for group in groups:
        if len(chosen) + len(group.rows) > n // 2:
            break
        chosen += group.rows
    grouped = {i for g in groups for i in g.rows}
    chosen += [i for i in range(len(examples)) if i not in grouped][: n - len(chosen)]
    return sorted(chosen)


# name: (torch threads, score_examples options); "today" is the path before group prefixes (the baseline).
EVAL_VARIANTS = {"today": (1, {"group_prefixes": False}), "groups": (1, {}), "today_2t": (2, {"group_prefixes": False}),
                 "groups_2t": (2, {})}


def eval_speed(cfg: SellaConfig, *, prompts: int = 192, batch_size: int = 16, seed: int = 0, repeats: int = 2,
               check_prompts: int = 32, stats_rows: int = 1500) -> dict[str, Any]:
    """Prompt scoring: today's path (length-sorted batches on the common prefix's cache, one thread) against the
    group prefixes (:func:`~sellarec.stages.evaluation.group_by_prefix`) at one and two threads, on the same stage-1
    prompts, in one process; the variants alternate ``repeats`` times. The prompts are all rows of randomly chosen
    users of a uniform ``stats_rows``-row test sample (the evaluation's size), at least ``prompts`` of them.

    The plain path (caller order, whole prompts) scores only ``check_prompts`` of them, grouped ones included, as the
    reference of every variant's scores.

    Returns:
        prompts/s of each variant (median over repeats) and per repeat, ratios against ``today``, the largest absolute
        score difference of each variant against the plain path (on the check rows) and against ``today`` (all
        rows), prefix-sharing counts (:func:`prefix_sharing`) of the timed prompts and of ``stats_rows`` test rows
        (stage 1 and stage 3), the load average before and after, and the machine.
    """
    load_before = os.getloadavg()
    ds, backbone, model = _with_random_adapter(cfg, seed)
    test = ds.split("test")

    def examples_of(rows, stage: int) -> list[Example]:
        return build_examples(ds, rows, backbone.tokenizer, stage=stage, tokens=cfg.stage3.tokens,
                              max_length=cfg.backbone.max_length, with_answer=False)

    # The timed prompts are every row of users drawn at random from the evaluation-sized sample, so they share
    # prefixes as often as a real evaluation does (a uniform draw of a few hundred rows would hardly ever repeat a
    # user, and would time the grouping on data it never sees).
    sample = test.sample(n=min(stats_rows, len(test)), random_state=seed)
    users = sample["user"].drop_duplicates().sample(frac=1.0, random_state=seed).to_numpy()
    counts = sample["user"].value_counts()
    taken = users[:int(np.searchsorted(np.cumsum(counts[users].to_numpy()), prompts) + 1)]
    examples = examples_of(sample[sample["user"].isin(taken)], 1)
    common = dict(batch_size=batch_size, score_fn=cfg.eval.score_fn, model=model)
    for threads in (1, 2):  # warm-up: first-call allocations, lazy inits and each thread pool
        torch.set_num_threads(threads)
        score_examples(backbone, examples[:4], **common)
    times: dict[str, list[float]] = {name: [] for name in EVAL_VARIANTS}
    scores = {}
    for _ in range(repeats):
        for name, (threads, options) in EVAL_VARIANTS.items():
            torch.set_num_threads(threads)
            start = time.perf_counter()
            scores[name] = score_examples(backbone, examples, **common, **options)
            times[name].append(time.perf_counter() - start)
    torch.set_num_threads(cfg.runtime.threads)
    check = _check_rows(examples, check_prompts)
    plain = score_examples(backbone, [examples[i] for i in check], sort_by_length=False, share_prefix=False, **common)
    rate = {name: len(examples) / statistics.median(t) for name, t in times.items()}
    stats = {stage: prefix_sharing(examples_of(sample, stage), tuple(backbone.special_ids.values()))
             for stage in (1, 3)}
    return {"prompts_per_s": rate, "runs_prompts_per_s": {k: [len(examples) / x for x in t] for k, t in times.items()},
            "speedup": {name: r / rate["today"] for name, r in rate.items()},
            "max_abs_diff_vs_plain": {k: float(abs(s[check] - plain).max()) for k, s in scores.items()},
            "max_abs_diff_vs_today": {k: float(abs(s - scores["today"]).max()) for k, s in scores.items()},
            "check_rows": len(check), "sharing": prefix_sharing(examples), "sharing_stats_rows": stats,
            "prompt_tokens": [len(e.ids) for e in examples], "load_before": load_before,
            "load_after": os.getloadavg(), "machine": describe_machine(), "split": cfg.data.split}
