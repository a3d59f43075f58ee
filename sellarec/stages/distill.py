"""Stage 2a: one semantic vector per item from the stage-1 LLM (METHOD.md §3).

The vector is the final (post-norm) hidden state of the last token of ``Movie: {title}`` (no chat template), i.e.
the representation that predicts the next token. Saved as floats: the official code's integer cast destroys most of
it (gap #2) and is only reproduced when ``stage2.faithful_int_cast`` is set.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from sellarec import status
from sellarec.config import Stage2Config
from sellarec.data.dataset import Dataset
from sellarec.data.prompts import item_prompt, item_words
from sellarec.models.backbone import Backbone
from sellarec.stages.evaluation import decoder_and_head

__all__ = ["distill_items"]


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) token ids and attention mask of token lists."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for k, ids in enumerate(rows):
        input_ids[k, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[k, : len(ids)] = 1
    return input_ids, attention


@torch.inference_mode()
def distill_items(cfg: Stage2Config, ds: Dataset, backbone: Backbone, model: torch.nn.Module, *,
                  max_length: int = 64, progress: bool = False) -> torch.Tensor:
    """Semantic table of shape (num_items, hidden) in float32; row 0 (padding) is zero.

    Items are batched in order of prompt length (stable), so batches carry little padding; a row's vector does not
    depend on its batch (to float rounding), so the table equals that of batches in item order.

    Args:
        cfg: stage-2 settings (item prompt template, batch size, faithful_int_cast).
        ds: dataset with the item titles.
        backbone: tokenizer and device.
        model: the stage-1 model (backbone + adapter).
        max_length: token cap of an item prompt (official: 64).
        progress: show a progress bar.
    """
    words = item_words(ds.item_word)
    tok = backbone.tokenizer
    body, _ = decoder_and_head(model)
    model.eval()
    table = torch.zeros(ds.num_items, backbone.hidden_size, dtype=torch.float32)
    texts = [item_prompt(cfg.item_prompt, words, ds.titles[i]) for i in range(1, ds.num_items)]
    tokens = tok(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(tokens)), key=lambda k: len(tokens[k]))
    for start in tqdm(range(0, len(order), cfg.distill_batch_size), desc="stage2 distill", disable=not progress,
                      leave=False):
        rows = order[start: start + cfg.distill_batch_size]
        input_ids, attention = _pad([tokens[k] for k in rows], tok.pad_token_id)
        hidden = body(input_ids=input_ids.to(backbone.device),
                      attention_mask=attention.to(backbone.device)).last_hidden_state  # (B, T, D)
        last = (attention.sum(dim=1) - 1).to(hidden.device)  # (B,) last real token
        table[[k + 1 for k in rows]] = hidden[torch.arange(len(rows), device=hidden.device), last].float().cpu()
        status.update("stage2 distill", min(start + cfg.distill_batch_size, len(order)), len(order))
    if cfg.faithful_int_cast:
        table = table.to(torch.int64).to(torch.float32)  # reproduces the official bug on purpose
    return table
