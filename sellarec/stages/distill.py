"""Stage 2a: one semantic vector per item from the stage-1 LLM (METHOD.md §3).

The vector is the final (post-norm) hidden state of the last token of ``Movie: {title}`` (no chat template), i.e.
the representation that predicts the next token. Saved as floats: the official code's integer cast destroys most of
it (gap #2) and is only reproduced when ``stage2.faithful_int_cast`` is set.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from sellarec.config import Stage2Config
from sellarec.data.dataset import Dataset
from sellarec.data.prompts import item_prompt, item_words
from sellarec.models.backbone import Backbone
from sellarec.stages.evaluation import decoder_and_head

__all__ = ["distill_items"]


@torch.inference_mode()
def distill_items(cfg: Stage2Config, ds: Dataset, backbone: Backbone, model: torch.nn.Module, *,
                  max_length: int = 64, progress: bool = False) -> torch.Tensor:
    """Semantic table of shape (num_items, hidden) in float32; row 0 (padding) is zero.

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
    item_ids = list(range(1, ds.num_items))
    for start in tqdm(range(0, len(item_ids), cfg.distill_batch_size), desc="stage2 distill", disable=not progress,
                      leave=False):
        ids = item_ids[start: start + cfg.distill_batch_size]
        texts = [item_prompt(cfg.item_prompt, words, ds.titles[i]) for i in ids]
        enc = tok(texts, add_special_tokens=False, padding=True, truncation=True, max_length=max_length,
                  return_tensors="pt", padding_side="right")
        enc = {k: v.to(backbone.device) for k, v in enc.items()}
        hidden = body(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state  # (B, T, D)
        last = enc["attention_mask"].sum(dim=1) - 1
        table[ids] = hidden[torch.arange(len(ids), device=hidden.device), last].float().cpu()
    if cfg.faithful_int_cast:
        table = table.to(torch.int64).to(torch.float32)  # reproduces the official bug on purpose
    return table
