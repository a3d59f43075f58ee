"""Scoring prompts with the LLM and evaluating the scores (METHOD.md §6), shared by stages 1 and 3.

Only the prompt up to the assistant header is fed, and the LM head is applied at the answer position alone
(``n_prefix - 1``), so evaluation never computes full-vocabulary logits for every position.

Three speed-ups leave the scores unchanged (to float rounding; tested against the plain path, whole prompts in the
caller's order): prompts are batched in order of length, so batches carry little padding; the token prefix that every
prompt shares (system message and the start of the user turn, about a quarter of a prompt) runs once, batch 1, and
its key/value cache is handed to every batch, which then runs only its suffix; and prompts that share a longer prefix
(two target items of one user with the same history) form groups whose prefix runs once on top of that cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedConfig

from sellarec import status
from sellarec.config import EvalConfig, ScoreFn
from sellarec.data.batches import Batch, Example, collate
from sellarec.data.dataset import Dataset
from sellarec.metrics import evaluate_slices
from sellarec.models.backbone import Backbone

__all__ = ["SharedPrefix", "PrefixGroup", "decoder_and_head", "answer_logits", "yes_no_score",
           "common_prefix_length", "build_shared_prefix", "extend_prefix", "group_by_prefix", "score_examples",
           "evaluate_scores"]

# Builds (B, T, D) input embeddings for a batch, e.g. stage 3's ID-token injection; None = plain token embeddings.
EmbedFn = Callable[[Batch], torch.Tensor]

# Below this many shared tokens the prefix pass and the per-batch cache copies buy little; the plain path is used.
MIN_SHARED_PREFIX = 8
# A group's prefix must reach this many tokens past the common prefix: it costs two extra forward passes (its
# prefix, batch 1, and its own suffix batch), which a few saved tokens per row do not pay for.
MIN_GROUP_PREFIX = 16


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


@dataclass(frozen=True)
class PrefixGroup:
    """Examples sharing a token prefix longer than the one common to all examples (:func:`group_by_prefix`).

    Attributes:
        rows: indices of the examples, in lexicographic token order.
        length: tokens of the group's prefix, counted from the start of the prompt; every answer position lies after.
    """

    rows: list[int]
    length: int


def _shared_length(a: Example, b: Example) -> int:
    """Length of the common token prefix of two examples, capped before both answer positions."""
    n = min(a.n_prefix - 1, b.n_prefix - 1, len(a.ids), len(b.ids))
    return max(next((i for i in range(n) if a.ids[i] != b.ids[i]), n), 0)


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


def _best_groups(order: list[int], shared: list[int], lo: int, hi: int, start: int) -> tuple[int, list[PrefixGroup]]:
    """Tokens saved and groups of sorted positions ``lo..hi-1``, whose neighbours all share enough tokens.

    The run either forms one group, whose prefix is its smallest ``shared`` value, or splits after every
    neighbour pair sharing only that value, each part solved the same way (the parts share strictly more, so the
    recursion is at most a prompt length deep). The choice that saves more tokens wins, the whole run on a tie.
    """
    if hi - lo < 2:
        return 0, []
    length = min(shared[lo: hi - 1])
    whole = ((hi - lo - 1) * (length - start), [PrefixGroup(order[lo:hi], length)])
    bounds = [lo] + [k + 1 for k in range(lo, hi - 1) if shared[k] == length] + [hi]
    parts = [_best_groups(order, shared, a, b, start) for a, b in zip(bounds, bounds[1:])]
    saved = sum(p[0] for p in parts)
    return whole if whole[0] >= saved else (saved, [g for p in parts for g in p[1]])


def group_by_prefix(examples: Sequence[Example], *, start: int,
                    min_length: int = MIN_GROUP_PREFIX) -> list[PrefixGroup]:
    """Disjoint groups of at least two examples that share at least ``start + min_length`` leading tokens.

    In lexicographic token order, prompts with a common prefix are neighbours, and a run of neighbours shares the
    smallest prefix of its neighbour pairs. Runs are cut where a pair shares fewer than ``start + min_length`` tokens;
    within a run, a group of g prompts with a prefix of L tokens computes (g - 1) * (L - start) tokens fewer than
    scoring them on top of the ``start`` common tokens, and :func:`_best_groups` picks the groups by that count
    (a greedy split, not an exhaustive search). Prefixes stop before every member's answer position.

    Args:
        examples: inference examples.
        start: tokens every example already shares (the common prefix's length, 0 without one).
        min_length: fewest tokens a group's prefix must add to ``start``.

    Returns:
        The groups, in lexicographic order; examples in none are scored in the ordinary batches.
    """
    order = sorted(range(len(examples)), key=lambda i: examples[i].ids)
    shared = [_shared_length(examples[a], examples[b]) for a, b in zip(order, order[1:])]
    groups: list[PrefixGroup] = []
    lo = 0
    for hi in range(1, len(order) + 1):
        if hi == len(order) or shared[hi - 1] < start + min_length:
            groups += _best_groups(order, shared, lo, hi, start)[1]
            lo = hi
    return groups


def _uninjected_length(model: torch.nn.Module, input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None,
                       length: int) -> int:
    """``length``, or the first column before it where any row's input embedding is not its token's embedding
    (an injected ID vector, which differs between rows)."""
    if inputs_embeds is None:
        return length
    tokens = model.get_input_embeddings()(input_ids[:, :length])  # (B, P, D)
    injected = (inputs_embeds[:, :length] != tokens).any(dim=-1).any(dim=0)  # (P,)
    return int(injected.float().argmax()) if bool(injected.any()) else length


def extend_prefix(model: torch.nn.Module, base: SharedPrefix | None, input_ids: torch.Tensor,
                  inputs_embeds: torch.Tensor | None = None) -> SharedPrefix:
    """Run a prefix through ``model``'s body (batch 1) on top of ``base``'s cache, which covers its first columns.

    Args:
        model: the causal LM (PEFT-wrapped or not), in the mode it will score in.
        base: a shorter prefix of the same tokens already run, or None to run all columns.
        input_ids: (1, P) the whole prefix, ``base``'s tokens included.
        inputs_embeds: (1, P, D) its input embeddings when scoring with an ``embed`` function, else None.
    """
    body, _ = decoder_and_head(model)
    n0, n = (0 if base is None else base.length), input_ids.shape[1]
    inputs = ({"input_ids": input_ids[:, n0:]} if inputs_embeds is None
              else {"inputs_embeds": inputs_embeds[:, n0:]})  # (1, P - P0) or (1, P - P0, D)
    if base is None:
        cache = body(**inputs, use_cache=True).cache
    else:
        positions = torch.arange(n0, n, device=input_ids.device).unsqueeze(0)  # (1, P - P0)
        cache = body(**inputs, attention_mask=torch.ones_like(input_ids), position_ids=positions,
                     cache=base.expand(1), use_cache=True).cache
    return SharedPrefix(input_ids=input_ids, inputs_embeds=inputs_embeds, cache=cache, config=body.config)


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
    embeds = embed(first)[:, :n] if embed is not None else None  # (1, P, D)
    n = _uninjected_length(model, ids, embeds, n)
    if n < min_length:
        return None
    return extend_prefix(model, None, ids[:, :n], None if embeds is None else embeds[:, :n])


def _take(batch: Batch, rows: slice) -> Batch:
    """Rows of a right-padded batch, without the columns that are padding in all of them."""
    width = int(batch.attention_mask[rows].sum(dim=1).max())
    return Batch(*(t[rows, :width] if t.dim() == 2 else t[rows]
                   for t in (getattr(batch, f) for f in batch.__dataclass_fields__)))


def _group_batches(model: torch.nn.Module, examples: Sequence[Example], group: PrefixGroup,
                   base: SharedPrefix | None, *, pad_id: int, device: torch.device, embed: EmbedFn | None,
                   batch_size: int, min_length: int) -> list[tuple[list[int], Batch, torch.Tensor | None,
                                                                   SharedPrefix]]:
    """A group's batches ``(rows, batch, inputs_embeds, group prefix)``, its prefix run once on top of ``base``;
    empty when an ``embed`` vector inside the prefix leaves fewer than ``min_length`` tokens past ``base``."""
    rows = sorted(group.rows, key=lambda i: len(examples[i].ids))
    batch = collate([examples[i] for i in rows], pad_id).to(device)
    embeds = embed(batch) if embed is not None else None  # (G, T, D)
    n0 = 0 if base is None else base.length
    n = _uninjected_length(model, batch.input_ids, embeds, group.length)
    if n - n0 < min_length:
        return []
    prefix = extend_prefix(model, base, batch.input_ids[:1, :n], None if embeds is None else embeds[:1, :n])
    chunks = []
    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        chunk = _take(batch, part)
        chunks.append((rows[part], chunk, None if embeds is None else embeds[part, :chunk.input_ids.shape[1]],
                       prefix))
    return chunks


@torch.inference_mode()
def score_examples(backbone: Backbone, examples: Sequence[Example], *, batch_size: int, score_fn: ScoreFn,
                   embed: EmbedFn | None = None, model: torch.nn.Module | None = None,
                   progress: bool = False, desc: str = "eval", sort_by_length: bool = True,
                   share_prefix: bool = True, group_prefixes: bool = True) -> np.ndarray:
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
        group_prefixes: with ``share_prefix``, also run each longer prefix that several prompts share
            (:func:`group_by_prefix`) once, on top of the common one, and those prompts' suffixes on top of it.

    Returns:
        (N,) float32 scores, in the order of ``examples``.
    """
    if not examples:
        return np.zeros(0)
    model = model if model is not None else backbone.model
    was_training = model.training
    model.eval()
    pad_id, device = backbone.tokenizer.pad_token_id, backbone.device
    scores = torch.zeros(len(examples), dtype=torch.float32)
    bar = tqdm(total=len(examples), desc=desc, disable=not progress, leave=False)
    done = [0]   # counted here: a disabled bar (trials run without bars) never advances its ``n``

    def score(rows: list[int], batch: Batch, inputs_embeds: torch.Tensor | None, prefix: SharedPrefix | None) -> None:
        logits = answer_logits(model, batch, inputs_embeds, prefix)
        scores[rows] = yes_no_score(logits, backbone.yes_id, backbone.no_id, score_fn).cpu()
        bar.update(len(rows))
        done[0] += len(rows)
        status.update(f"{desc} scoring", done[0], len(examples))

    # One prefix for the whole call, not one per batch: the shared part is the prompt template, and a per-batch
    # prefix would add a forward per batch to gain a token now and then where a batch's first titles coincide.
    prefix = (build_shared_prefix(model, examples, pad_id=pad_id, device=device, embed=embed)
              if share_prefix else None)
    grouped: set[int] = set()
    if share_prefix and group_prefixes:
        start = 0 if prefix is None else prefix.length
        for group in group_by_prefix(examples, start=start):
            for rows, batch, inputs_embeds, group_prefix in _group_batches(
                    model, examples, group, prefix, pad_id=pad_id, device=device, embed=embed,
                    batch_size=batch_size, min_length=MIN_GROUP_PREFIX):
                score(rows, batch, inputs_embeds, group_prefix)
                grouped.update(rows)
    rest = [i for i in range(len(examples)) if i not in grouped]
    order = sorted(rest, key=lambda i: len(examples[i].ids)) if sort_by_length else rest
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        batch = collate([examples[i] for i in rows], pad_id).to(device)
        score(rows, batch, embed(batch) if embed is not None else None, prefix)
    bar.close()
    model.train(was_training)
    return scores.numpy()


def evaluate_scores(ds: Dataset, rows: pd.DataFrame, scores: np.ndarray, cfg: EvalConfig, prefix: str,
                    seed: int = 0, bootstrap: bool = False) -> dict[str, float]:
    """AUC/UAUC on all, warm and cold rows (warm by ``data.warm_definition``), with bootstrap CIs if asked."""
    frame = rows.assign(score=scores)
    return evaluate_slices(frame, warm_col=f"warm_{ds.config.warm_definition}", prefix=prefix,
                           bootstrap_samples=cfg.bootstrap_samples if bootstrap else 0, ci_level=cfg.ci_level,
                           seed=seed)
