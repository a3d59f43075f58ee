"""Stage-2a distillation on the tiny backbone: length-sorted batches give each item the vector of its prompt run
alone (no padding), in item order."""

from __future__ import annotations

import torch

from sellarec.config import Stage2Config
from sellarec.data.prompts import item_prompt, item_words
from sellarec.stages.distill import distill_items
from sellarec.stages.evaluation import decoder_and_head


def test_length_sorted_batches_give_each_item_its_own_vector(tiny_stage3_parts) -> None:
    ds, bb, model, *_ = tiny_stage3_parts
    body, _ = decoder_and_head(model)
    widths: list[int] = []
    handle = body.register_forward_pre_hook(lambda _m, _a, kw: widths.append(kw["input_ids"].shape[1]),
                                            with_kwargs=True)
    try:
        table = distill_items(Stage2Config(distill_batch_size=8), ds, bb, model)
    finally:
        handle.remove()
    assert widths == sorted(widths)  # batches in order of prompt length

    words = item_words(ds.item_word)
    items = range(1, ds.num_items)
    lengths = {len(bb.tokenizer(item_prompt("{word}: {title}", words, ds.titles[i]),
                                add_special_tokens=False)["input_ids"]) for i in items}
    assert len(lengths) > 3  # batches in item order would mix lengths
    expected = torch.zeros_like(table)
    with torch.inference_mode():
        for item in items:
            ids = bb.tokenizer(item_prompt("{word}: {title}", words, ds.titles[item]), add_special_tokens=False,
                               return_tensors="pt")["input_ids"]  # (1, T)
            expected[item] = body(input_ids=ids).last_hidden_state[0, -1]
    assert table.shape == (ds.num_items, bb.hidden_size) and not table[0].any()
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-5)
