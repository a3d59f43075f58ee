"""Tokenised prompts and batches on the tiny backbone: structural answer position, loss masks, sampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sellarec.config import DataConfig
from sellarec.data import load_dataset
from sellarec.data.batches import build_examples, collate, sample_rows
from sellarec.models.backbone import load_backbone
from sellarec.data.prompts import tiny_corpus


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    ds = load_dataset(DataConfig(max_users=40), cache)
    return ds, load_backbone("tiny", cache_dir=cache, tiny_corpus=tiny_corpus(ds.titles, ds.item_word))


def test_answer_token_sits_right_after_the_prefix(tiny) -> None:
    ds, bb = tiny
    rows = ds.split("valid").head(20)
    for ex in build_examples(ds, rows, bb.tokenizer, stage=1, max_length=512, with_answer=True):
        assert bb.tokenizer.decode(ex.ids[: ex.n_prefix]).endswith("<|im_start|>assistant\n")
        assert ex.ids[ex.n_prefix] == (bb.yes_id if ex.label == 1 else bb.no_id)
    inference = build_examples(ds, rows, bb.tokenizer, stage=1, max_length=512, with_answer=False)
    assert all(len(ex.ids) == ex.n_prefix for ex in inference)


def test_stage3_examples_carry_each_id_token_once(tiny) -> None:
    ds, bb = tiny
    rows = ds.split("test").head(10)
    for ex in build_examples(ds, rows, bb.tokenizer, stage=3, tokens=("user", "warm"), max_length=512,
                             with_answer=False):
        assert ex.ids.count(bb.special_ids["<User_ID>"]) == 1
        assert ex.ids.count(bb.special_ids["<Warm_ID>"]) == 1
        assert ex.ids.count(bb.special_ids["<Item_ID>"]) == 0


def test_loss_masks_follow_the_attention_mask_not_the_pad_id(tiny) -> None:
    ds, bb = tiny
    examples = build_examples(ds, ds.split("train").head(4), bb.tokenizer, stage=1, max_length=512, with_answer=True)
    end_id = bb.tokenizer.convert_tokens_to_ids("<|im_end|>")
    batch = collate(examples, pad_id=end_id, loss_mask="all_tokens")   # pad id == a real token, as on SmolLM2
    for row, ex in enumerate(examples):
        n = len(ex.ids)
        assert batch.labels[row, :n].tolist() == ex.ids                # every real token is a target ...
        assert (batch.labels[row, n:] == -100).all()                   # ... padding never is
        assert batch.labels[row, n - 1].item() == end_id               # including the real <|im_end|>
        assert batch.answer_pos[row].item() == ex.n_prefix - 1
    answer_only = collate(examples, pad_id=end_id, loss_mask="answer_only")
    for row, ex in enumerate(examples):
        targets = answer_only.labels[row][answer_only.labels[row] != -100].tolist()
        assert targets == ex.ids[ex.n_prefix:]


def test_long_prompts_drop_the_oldest_titles(tiny) -> None:
    ds, bb = tiny
    rows = ds.split("train")
    rows = rows[rows["history"].map(len) == 10].head(3)
    full = build_examples(ds, rows, bb.tokenizer, stage=1, max_length=10_000, with_answer=True)
    limit = min(len(e.ids) for e in full) - 15
    cut = build_examples(ds, rows, bb.tokenizer, stage=1, max_length=limit, with_answer=True)
    for ex in cut:
        assert len(ex.ids) <= limit and ex.truncated_titles >= 1
        assert ex.ids[ex.n_prefix] in (bb.yes_id, bb.no_id)            # the answer survives truncation


def test_sample_rows_is_uniform_over_rows() -> None:
    # One heavy user (150 of 200 rows) and ten light ones: a uniform row sample gives each row the same inclusion
    # probability 50/200, so the heavy user's share of the sample is 3/4 on average (a per-user cap would not).
    rows = pd.DataFrame({"user": [0] * 150 + [u for u in range(1, 11) for _ in range(5)], "x": range(200)})
    counts = np.zeros(200)
    for seed in range(400):
        sampled = sample_rows(rows, max_samples=50, seed=seed)
        assert len(sampled) == 50 and sampled["x"].is_unique
        assert sampled["x"].is_monotonic_increasing                      # input order kept
        counts[sampled["x"].to_numpy()] += 1
    inclusion = counts / 400
    assert abs(inclusion.mean() - 0.25) < 1e-12                          # exactly 50 of 200 every time
    assert np.abs(inclusion - 0.25).max() < 0.12                         # binomial(400, .25): sd 0.022, 5 sd
    assert abs(inclusion[:150].sum() / inclusion.sum() - 0.75) < 0.01
    assert sample_rows(rows, None, 0) is rows and sample_rows(rows, 500, 0) is rows
    assert sample_rows(rows, 50, seed=1)["x"].tolist() != sample_rows(rows, 50, seed=0)["x"].tolist()
