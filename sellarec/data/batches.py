"""Prompts -> token ids -> padded batches, with the answer position found structurally (METHOD.md §6.1).

A prompt is rendered as ``prefix`` (up to and including the assistant header) plus ``answer``; both are tokenised
separately and concatenated, so the position whose logits predict the answer is ``n_prefix - 1`` by construction,
never by searching the text for "Yes"/"No".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from sellarec.data.dataset import Dataset
from sellarec.data.prompts import (history_titles, item_words, render_chat, stage1_prompt, stage3_prompt)

__all__ = ["Example", "Batch", "build_examples", "collate", "sample_rows", "iter_batches"]


@dataclass(frozen=True)
class Example:
    """One tokenised prompt.

    Attributes:
        ids: prefix tokens followed by answer tokens (no answer at inference).
        n_prefix: number of prefix tokens; logits at ``n_prefix - 1`` score the answer.
        label: 1 (Yes) or 0 (No).
        user: user id.
        item: target item id.
        truncated_titles: history titles dropped to fit ``max_length``.
    """

    ids: list[int]
    n_prefix: int
    label: int
    user: int
    item: int
    truncated_titles: int


@dataclass
class Batch:
    """Right-padded tensors of a list of examples.

    Attributes:
        input_ids: (B, T) token ids, padded with the pad id.
        attention_mask: (B, T) 1 on real tokens.
        labels: (B, T) LM targets (-100 where no loss), unshifted as Hugging Face expects.
        answer_pos: (B,) index of the position whose logits predict the answer.
        labels_yes: (B,) 0/1 labels.
        users: (B,) user ids.
        items: (B,) item ids.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    answer_pos: torch.Tensor
    labels_yes: torch.Tensor
    users: torch.Tensor
    items: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        """The same batch on ``device``."""
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def sample_rows(rows: pd.DataFrame, max_samples: int | None, seed: int) -> pd.DataFrame:
    """A uniform random sample of ``max_samples`` rows (all rows when None or fewer exist), in the input's order.

    Every row has the same chance of being drawn, so AUC on the sample estimates the AUC of the whole split; a
    per-user cap would weight users equally and estimate another quantity. Warm/cold slices are read from the same
    rows, and one seed gives the same rows to every method and ablation cell.
    """
    if max_samples is None or max_samples >= len(rows):
        return rows
    rng = np.random.default_rng(seed)
    positions = np.sort(rng.choice(len(rows), size=max_samples, replace=False))
    return rows.iloc[positions]


def _encode(tokenizer: Any, prefix: str, answer: str) -> tuple[list[int], int]:
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
    return list(prefix_ids) + list(answer_ids), len(prefix_ids)


def build_examples(ds: Dataset, rows: pd.DataFrame, tokenizer: Any, *, stage: Literal[1, 3],
                   tokens: Sequence[str] = (), max_length: int, with_answer: bool) -> list[Example]:
    """Tokenise the prompts of ``rows``.

    Args:
        ds: the dataset (titles, item word, history settings).
        rows: interactions to render.
        tokenizer: the backbone tokenizer (its chat template is used where it has one).
        stage: 1 for the text prompt, 3 for the prompt with ID tokens.
        tokens: ID tokens of a stage-3 prompt.
        max_length: longest prompt; the oldest history titles are dropped until it fits.
        with_answer: append the answer (training) or stop after the assistant header (inference).
    """
    words = item_words(ds.item_word)
    cfg = ds.config
    examples = []
    for row in rows.itertuples(index=False):
        history = history_titles(row.history, ds.titles, cfg.history_len, cfg.history_placeholder)
        dropped = 0
        while True:
            label = int(row.label) if with_answer else None
            prompt = (stage1_prompt(words, history, ds.titles[row.item], label) if stage == 1 else
                      stage3_prompt(words, history, ds.titles[row.item], label, tokens))
            ids, n_prefix = _encode(tokenizer, *render_chat(tokenizer, prompt))
            if len(ids) <= max_length or not history:
                break
            history, dropped = history[1:], dropped + 1
        examples.append(Example(ids[:max_length], min(n_prefix, max_length), int(row.label), int(row.user),
                                int(row.item), dropped))
    return examples


def collate(examples: Sequence[Example], pad_id: int,
            loss_mask: Literal["all_tokens", "answer_only"] = "all_tokens") -> Batch:
    """Pad to the longest example (dynamic padding, not the official fixed 768).

    ``all_tokens`` puts a target on every real token (official); ``answer_only`` only on the answer tokens.
    Targets are masked by the attention mask, not by the pad id: SmolLM2's pad id is also its real ``<|im_end|>``.
    """
    width = max(len(e.ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, ex in enumerate(examples):
        ids = torch.tensor(ex.ids, dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        attention[row, : len(ids)] = 1
        start = 0 if loss_mask == "all_tokens" else ex.n_prefix
        labels[row, start: len(ids)] = ids[start:]
    return Batch(
        input_ids=input_ids, attention_mask=attention, labels=labels,
        answer_pos=torch.tensor([e.n_prefix - 1 for e in examples], dtype=torch.long),
        labels_yes=torch.tensor([e.label for e in examples], dtype=torch.long),
        users=torch.tensor([e.user for e in examples], dtype=torch.long),
        items=torch.tensor([e.item for e in examples], dtype=torch.long),
    )


def iter_batches(examples: Sequence[Example], batch_size: int, *, shuffle: bool = False,
                 generator: torch.Generator | None = None) -> list[list[Example]]:
    """Split examples into lists of at most ``batch_size``, optionally shuffled with ``generator``."""
    order = torch.randperm(len(examples), generator=generator).tolist() if shuffle else range(len(examples))
    ordered = [examples[i] for i in order]
    return [ordered[i: i + batch_size] for i in range(0, len(ordered), batch_size)]
