"""Benchmarks run by hand (``bench/``), never as timed tests. Each reports ratios against a baseline measured in the
same process on the same inputs, plus the machine it ran on."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from sellarec.config import SellaConfig
from sellarec.data.batches import build_examples, collate, sample_rows
from sellarec.data.dataset import Dataset, load_dataset
from sellarec.models.backbone import Backbone
from sellarec.models.collab import AlignedMF
from sellarec.models.lora import attach_lora
from sellarec.pipeline import load_run_backbone
from sellarec.runtime import cache_root, configure_threads, describe_machine
from sellarec.stages import stage3
from sellarec.stages.evaluation import common_prefix_length, score_examples

__all__ = ["stage3_step", "eval_speed"]


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


def eval_speed(cfg: SellaConfig, *, prompts: int = 96, batch_size: int = 16, seed: int = 0) -> dict[str, Any]:
    """Prompt scoring, the plain path (caller order, whole prompts) against ``score_examples``' defaults (length-
    sorted batches, the shared prefix's key/value cache), on the same stage-1 valid prompts in one process.

    Returns:
        prompts/s of each path, their ratio, the largest absolute score difference, the prompt lengths, the shared
        prefix length and the machine.
    """
    ds, backbone, model = _with_random_adapter(cfg, seed)
    rows = sample_rows(ds.split("valid"), prompts, cfg.eval.max_rows_per_user, seed=seed)
    examples = build_examples(ds, rows, backbone.tokenizer, stage=1, max_length=cfg.backbone.max_length,
                              with_answer=False)
    common = dict(batch_size=batch_size, score_fn=cfg.eval.score_fn, model=model)
    score_examples(backbone, examples[:4], **common)  # warm-up: first-call allocations and lazy inits
    rate, scores = {}, {}
    for path, fast in (("plain", False), ("fast", True)):
        start = time.perf_counter()
        scores[path] = score_examples(backbone, examples, sort_by_length=fast, share_prefix=fast, **common)
        rate[path] = len(examples) / (time.perf_counter() - start)
    return {"plain_prompts_per_s": rate["plain"], "fast_prompts_per_s": rate["fast"],
            "speedup": rate["fast"] / rate["plain"],
            "max_abs_score_diff": float(abs(scores["fast"] - scores["plain"]).max()),
            "prompt_tokens": [len(e.ids) for e in examples], "shared_prefix": common_prefix_length(examples),
            "machine": describe_machine()}
