"""Benchmarks run by hand (``bench/``), never as timed tests. Each reports ratios against a baseline measured in the
same process on the same inputs, plus the machine it ran on."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from sellarec.config import SellaConfig
from sellarec.data.batches import build_examples, collate
from sellarec.data.dataset import load_dataset
from sellarec.models.collab import AlignedMF
from sellarec.models.lora import attach_lora
from sellarec.pipeline import load_run_backbone
from sellarec.runtime import cache_root, configure_threads, describe_machine
from sellarec.stages import stage3

__all__ = ["stage3_step"]


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
    model.eval()
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
