"""Scoring prompts with the LLM and evaluating the scores (METHOD.md §6), shared by stages 1 and 3.

Only the prompt up to the assistant header is fed, and the LM head is applied at the answer position alone
(``n_prefix - 1``), so evaluation never computes full-vocabulary logits for every position.

Two speed-ups leave the scores unchanged (to float rounding; tested against one-prompt-at-a-time scoring): prompts
are batched in order of length, so batches carry little padding, and the token prefix that every prompt shares
(system message and the start of the user turn, about a quarter of a prompt) runs once, batch 1, and its key/value
cache is handed to every batch, which then runs only its suffix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedConfig

from sellarec.config import EvalConfig, ScoreFn
from sellarec.data.batches import Batch, Example, collate
from sellarec.data.dataset import Dataset
from sellarec.metrics import evaluate_slices
from sellarec.models.backbone import Backbone

__all__ = ["SharedPrefix", "decoder_and_head", "answer_logits", "yes_no_score", "common_prefix_length",
           "build_shared_prefix", "score_examples", "evaluate_scores"]

# Builds (B, T, D) input embeddings for a batch, e.g. stage 3's ID-token injection; None = plain token embeddings.
EmbedFn = Callable[[Batch], torch.Tensor]

# Below this many shared tokens the prefix pass and the per-batch cache copies buy little; the plain path is used.
MIN_SHARED_PREFIX = 8


@dataclass(frozen=True)
class SharedPrefix:
    """The token prefix common to a set of prompts, already run through the transformer body (batch 1).

    Attributes:
        input_ids: (1, P) the prefix tokens.
        inputs_embeds: (1, P, D) the prefix input embeddings when scoring with an ``embed`` function, else None.
        cache: the key/value cache of the prefix, batch 1; never passed to a forward itself (forward appends to it).
        config: the model config, so that copies get the model's cache layer types.
    """

    input_ids: torch.Tensor
    inputs_embeds: torch.Tensor | None
    cache: DynamicCache
    config: PreTrainedConfig

    @property
    def length(self) -> int:
        """Number of prefix tokens P."""
        return self.input_ids.shape[1]

    def expand(self, batch_size: int) -> DynamicCache:
        """A fresh cache holding the prefix keys/values for ``batch_size`` rows, for one forward to extend."""
        layers = [(keys.expand(batch_size, -1, -1, -1), values.expand(batch_size, -1, -1, -1))
                  for keys, values, *_ in self.cache]  # each (B, H_kv, P, d_head); DynamicCache copies on fill
        return DynamicCache(layers, config=self.config)

    def covers(self, batch: Batch, inputs_embeds: torch.Tensor | None) -> bool:
        """Whether every row of ``batch`` starts with this prefix (ids and, if given, embeddings) and answers after it.

        The embedding check catches an ``embed`` function that writes per-row vectors inside the prefix.
        """
        n = self.length
        if batch.input_ids.shape[1] <= n or int(batch.answer_pos.min()) < n:
            return False
        if not bool((batch.input_ids[:, :n] == self.input_ids).all()):
            return False
        if inputs_embeds is None:
            return self.inputs_embeds is None
        return self.inputs_embeds is not None and bool((inputs_embeds[:, :n] == self.inputs_embeds).all())


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body and the LM head of a causal LM, through a PEFT wrapper if there is one.

    LoRA layers are injected in place, so calling the body still runs the adapters.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.get_output_embeddings()


def answer_logits(model: torch.nn.Module, batch: Batch, inputs_embeds: torch.Tensor | None = None,
                  prefix: SharedPrefix | None = None) -> torch.Tensor:
    """Next-token logits at each example's answer position: (B, V).

    Args:
        model: the causal LM (PEFT-wrapped or not).
        batch: right-padded prompts.
        inputs_embeds: (B, T, D) input embeddings replacing the token embeddings (stage 3), or None.
        prefix: a shared prefix already run through ``model``; used when it :meth:`~SharedPrefix.covers` the batch,
            in which case only the columns after it are run. None, or a prefix that does not cover, runs all columns.
    """
    body, head = decoder_and_head(model)
    if prefix is not None and prefix.covers(batch, inputs_embeds):
        n, width = prefix.length, batch.input_ids.shape[1]
        inputs = ({"input_ids": batch.input_ids[:, n:]} if inputs_embeds is None
                  else {"inputs_embeds": inputs_embeds[:, n:]})  # (B, T - P) or (B, T - P, D)
        positions = torch.arange(n, width, device=batch.input_ids.device).unsqueeze(0)  # (1, T - P), as unsplit
        # The mask spans prefix + suffix: the cached prefix columns are real tokens of every row.
        hidden = body(**inputs, attention_mask=batch.attention_mask, position_ids=positions,
                      cache=prefix.expand(batch.input_ids.shape[0]), use_cache=True).last_hidden_state
        answer_pos = batch.answer_pos - n
    else:
        inputs = {"input_ids": batch.input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
        hidden = body(**inputs, attention_mask=batch.attention_mask).last_hidden_state
        answer_pos = batch.answer_pos
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return head(hidden[rows, answer_pos])  # (B, V)


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


def common_prefix_length(examples: Sequence[Example]) -> int:
    """Length of the longest token prefix shared by all ``examples``, capped so that every answer position
    (``n_prefix - 1``) lies after it; 0 for no examples."""
    if not examples:
        return 0
    first = examples[0].ids
    n = min(min(e.n_prefix for e in examples) - 1, len(first))
    for ex in examples[1:]:
        n = next((i for i in range(n) if ex.ids[i] != first[i]), n)
        if n == 0:
            break
    return max(n, 0)


def build_shared_prefix(model: torch.nn.Module, examples: Sequence[Example], *, pad_id: int, device: torch.device,
                        embed: EmbedFn | None = None, min_length: int = MIN_SHARED_PREFIX) -> SharedPrefix | None:
    """Run the prefix common to ``examples`` through ``model``'s body once (batch 1) and keep its key/value cache.

    With ``embed``, the prefix is cut before the first position where it writes anything but the token embedding
    (an injected ID token), since such vectors differ between rows. Call under ``torch.inference_mode()`` or
    ``no_grad``, with ``model`` in the mode (eval) it will score in.

    Returns:
        The prefix, or None when it is shorter than ``min_length`` tokens.
    """
    n = common_prefix_length(examples)
    if n < min_length:
        return None
    first = collate([examples[0]], pad_id).to(device)
    ids = first.input_ids[:, :n]  # (1, P)
    body, _ = decoder_and_head(model)
    embeds = None
    if embed is not None:
        embeds = embed(first)[:, :n]  # (1, P, D)
        injected = (embeds != model.get_input_embeddings()(ids)).any(dim=-1)[0]  # (P,)
        if bool(injected.any()):
            n = int(injected.float().argmax())
            if n < min_length:
                return None
            ids, embeds = ids[:, :n], embeds[:, :n]
    inputs = {"input_ids": ids} if embeds is None else {"inputs_embeds": embeds}
    cache = body(**inputs, use_cache=True).cache
    return SharedPrefix(input_ids=ids, inputs_embeds=embeds, cache=cache, config=body.config)


@torch.inference_mode()
def score_examples(backbone: Backbone, examples: Sequence[Example], *, batch_size: int, score_fn: ScoreFn,
                   embed: EmbedFn | None = None, model: torch.nn.Module | None = None,
                   progress: bool = False, desc: str = "eval", sort_by_length: bool = True,
                   share_prefix: bool = True) -> np.ndarray:
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
        sort_by_length: batch the prompts in order of token length (stable, so deterministic) to cut padding.
        share_prefix: run the token prefix common to all ``examples`` once and only the rest per batch
            (:func:`build_shared_prefix`; skipped when shorter than ``MIN_SHARED_PREFIX``). Both False is the plain
            path: caller order, whole prompts.

    Returns:
        (N,) float32 scores, in the order of ``examples``.
    """
    if not examples:
        return np.zeros(0)
    model = model if model is not None else backbone.model
    was_training = model.training
    model.eval()
    pad_id = backbone.tokenizer.pad_token_id
    # One prefix for the whole call, not one per batch: the shared part is the prompt template, and a per-batch
    # prefix would add a forward per batch to gain a token now and then where a batch's first titles coincide.
    prefix = (build_shared_prefix(model, examples, pad_id=pad_id, device=backbone.device, embed=embed)
              if share_prefix else None)
    order = (sorted(range(len(examples)), key=lambda i: len(examples[i].ids)) if sort_by_length
             else list(range(len(examples))))
    scores = torch.zeros(len(examples), dtype=torch.float32)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        rows = order[start: start + batch_size]
        batch = collate([examples[i] for i in rows], pad_id).to(backbone.device)
        logits = answer_logits(model, batch, embed(batch) if embed is not None else None, prefix)
        scores[rows] = yes_no_score(logits, backbone.yes_id, backbone.no_id, score_fn).cpu()
    model.train(was_training)
    return scores.numpy()


def evaluate_scores(ds: Dataset, rows: pd.DataFrame, scores: np.ndarray, cfg: EvalConfig, prefix: str,
                    seed: int = 0, bootstrap: bool = False) -> dict[str, float]:
    """AUC/UAUC on all, warm and cold rows (warm by ``data.warm_definition``), with bootstrap CIs if asked."""
    frame = rows.assign(score=scores)
    return evaluate_slices(frame, warm_col=f"warm_{ds.config.warm_definition}", prefix=prefix,
                           bootstrap_samples=cfg.bootstrap_samples if bootstrap else 0, ci_level=cfg.ci_level,
                           seed=seed)
