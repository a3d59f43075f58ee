"""Scoring prompts with the LLM and evaluating the scores (METHOD.md §6), shared by stages 1 and 3.

Only the prompt up to the assistant header is fed, and the LM head is applied at the answer position alone
(``n_prefix - 1``), so evaluation never computes full-vocabulary logits for every position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sellarec.config import EvalConfig, ScoreFn
from sellarec.data.batches import Batch, Example, collate, iter_batches
from sellarec.data.dataset import Dataset
from sellarec.metrics import evaluate_slices
from sellarec.models.backbone import Backbone

__all__ = ["decoder_and_head", "answer_logits", "yes_no_score", "score_examples", "evaluate_scores"]

# Builds (B, T, D) input embeddings for a batch, e.g. stage 3's ID-token injection; None = plain token embeddings.
EmbedFn = Callable[[Batch], torch.Tensor]


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body and the LM head of a causal LM, through a PEFT wrapper if there is one.

    LoRA layers are injected in place, so calling the body still runs the adapters.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.get_output_embeddings()


def answer_logits(model: torch.nn.Module, batch: Batch, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token logits at each example's answer position: (B, V)."""
    body, head = decoder_and_head(model)
    if inputs_embeds is None:
        hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    else:
        hidden = body(inputs_embeds=inputs_embeds, attention_mask=batch.attention_mask).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return head(hidden[rows, batch.answer_pos])  # (B, V)


def yes_no_score(logits: torch.Tensor, yes_id: int, no_id: int, score_fn: ScoreFn) -> torch.Tensor:
    """Score in [0, 1] from answer-position logits (B, V).

    ``two_way_softmax``: softmax over (logit_No, logit_Yes), i.e. P(Yes) / (P(Yes) + P(No)).
    ``double_softmax`` (official SeLLa code): full-vocabulary softmax, then a second softmax over
    (P(No), P(Yes)), i.e. sigmoid(P(Yes) - P(No)). Monotone in P(Yes) - P(No), not rank-equivalent to the first.
    """
    logits = logits.float()
    if score_fn == "two_way_softmax":
        return torch.sigmoid(logits[:, yes_id] - logits[:, no_id])
    probs = torch.softmax(logits, dim=-1)
    return torch.sigmoid(probs[:, yes_id] - probs[:, no_id])


@torch.inference_mode()
def score_examples(backbone: Backbone, examples: Sequence[Example], *, batch_size: int, score_fn: ScoreFn,
                   embed: EmbedFn | None = None, model: torch.nn.Module | None = None,
                   progress: bool = False, desc: str = "eval") -> np.ndarray:
    """Scores of ``examples`` (prompts without answers), in their order.

    Args:
        backbone: tokenizer ids and the default model.
        examples: inference examples (``with_answer=False``).
        batch_size: prompts per forward pass.
        score_fn: see :func:`yes_no_score`.
        embed: optional input-embedding builder (stage 3); None uses token embeddings.
        model: the model to run (e.g. the PEFT-wrapped one); defaults to ``backbone.model``.
        progress: show a progress bar.
        desc: progress-bar label.
    """
    model = model if model is not None else backbone.model
    was_training = model.training
    model.eval()
    pad_id = backbone.tokenizer.pad_token_id
    scores = []
    for chunk in tqdm(iter_batches(examples, batch_size), desc=desc, disable=not progress, leave=False):
        batch = collate(chunk, pad_id).to(backbone.device)
        logits = answer_logits(model, batch, embed(batch) if embed is not None else None)
        scores.append(yes_no_score(logits, backbone.yes_id, backbone.no_id, score_fn).cpu())
    model.train(was_training)
    return torch.cat(scores).numpy() if scores else np.zeros(0)


def evaluate_scores(ds: Dataset, rows: pd.DataFrame, scores: np.ndarray, cfg: EvalConfig, prefix: str,
                    seed: int = 0, bootstrap: bool = False) -> dict[str, float]:
    """AUC/UAUC on all, warm and cold rows (warm by ``data.warm_definition``), with bootstrap CIs if asked."""
    frame = rows.assign(score=scores)
    return evaluate_slices(frame, warm_col=f"warm_{ds.config.warm_definition}", prefix=prefix,
                           bootstrap_samples=cfg.bootstrap_samples if bootstrap else 0, ci_level=cfg.ci_level,
                           seed=seed)
