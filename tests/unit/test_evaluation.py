"""Prompt scoring on the tiny backbone: length-sorted batches and the shared-prefix cache give the scores of
scoring each prompt alone, in the caller's order, for stage-1 and stage-3 prompts; the plain path as fallback."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sellarec.config import CollabProjectorConfig, SemanticProjectorConfig, Stage3Config
from sellarec.data.batches import Example, build_examples
from sellarec.stages import stage3
from sellarec.stages.evaluation import (MIN_SHARED_PREFIX, build_shared_prefix, common_prefix_length,
                                        decoder_and_head, score_examples)

from conftest import TINY_HIDDEN as HIDDEN  # the tiny_stage3_parts fixture's sizes


@pytest.fixture(scope="module")
def setup(tiny_stage3_parts):
    ds, bb, model, mf, semantic = tiny_stage3_parts
    cfg = Stage3Config(collab_projector=CollabProjectorConfig(hidden=HIDDEN),
                       semantic_projector=SemanticProjectorConfig(rank=4, hidden=HIDDEN))
    injector = stage3.build_injector(cfg, mf, semantic, bb, seed=0).eval()
    return ds, bb, model, injector


def _examples(setup, stage: int, n: int = 12) -> list[Example]:
    ds, bb, *_ = setup
    rows = ds.split("valid").head(20)
    examples = build_examples(ds, rows.iloc[:: 20 // n][:n], bb.tokenizer, stage=stage,  # spread over the lengths
                              tokens=("user", "item", "warm"), max_length=512, with_answer=False)
    assert max(len(e.ids) for e in examples) - min(len(e.ids) for e in examples) > 20  # batches mix lengths
    return examples


def _embed(setup):
    _, _, model, injector = setup
    return lambda b: injector(b.input_ids, b.users, b.items, model.get_input_embeddings())


def _alone(setup, examples, embed=None) -> np.ndarray:
    """The independent expectation: each prompt scored on its own, no padding, no prefix cache."""
    _, bb, model, _ = setup
    return np.concatenate([score_examples(bb, [ex], batch_size=1, score_fn="two_way_softmax", model=model,
                                          embed=embed, sort_by_length=False, share_prefix=False)
                           for ex in examples])


def _body_widths(model) -> tuple[list[tuple[int, int, bool]], torch.utils.hooks.RemovableHandle]:
    """Records (batch, columns, has_cache) of every call of the transformer body."""
    calls: list[tuple[int, int, bool]] = []

    def hook(_module, _args, kwargs):
        x = kwargs.get("input_ids")
        x = kwargs["inputs_embeds"] if x is None else x
        calls.append((x.shape[0], x.shape[1], kwargs.get("cache") is not None))

    return calls, decoder_and_head(model)[0].register_forward_pre_hook(hook, with_kwargs=True)


def test_common_prefix_length_by_hand() -> None:
    def ex(ids, n_prefix=None):
        return Example(ids, len(ids) if n_prefix is None else n_prefix, 0, 0, 0, 0)

    assert common_prefix_length([]) == 0
    assert common_prefix_length([ex([1, 2, 3, 4, 9]), ex([1, 2, 3, 5, 9, 9])]) == 3
    assert common_prefix_length([ex([1, 2, 3, 4]), ex([1, 2, 3, 4])]) == 3   # answer position 3 stays after it
    assert common_prefix_length([ex([1, 2, 3, 4, 5], n_prefix=3)]) == 2     # capped by the answer position
    assert common_prefix_length([ex([7, 2, 3]), ex([1, 2, 3])]) == 0


@pytest.mark.parametrize("stage", [1, 3])
def test_fast_scores_equal_scoring_each_prompt_alone(setup, stage) -> None:
    _, bb, model, _ = setup
    examples = _examples(setup, stage)
    embed = _embed(setup) if stage == 3 else None
    expected = _alone(setup, examples, embed)
    calls, handle = _body_widths(model)
    try:
        fast = score_examples(bb, examples, batch_size=4, score_fn="two_way_softmax", model=model, embed=embed)
    finally:
        handle.remove()
    np.testing.assert_allclose(fast, expected, rtol=0, atol=1e-5)
    n = common_prefix_length(examples)
    assert n >= MIN_SHARED_PREFIX
    assert calls[0] == (1, n, False)                                       # the prefix, once, batch 1
    assert len(calls) == 1 + 3 and all(has_cache for *_, has_cache in calls[1:])
    widths = sorted(len(e.ids) for e in examples)                          # suffix passes, shortest batch first
    assert [c[1] for c in calls[1:]] == [max(widths[i: i + 4]) - n for i in range(0, len(widths), 4)]
    if stage == 3:                                                         # ID tokens are never in the prefix
        assert all(ex.ids.index(bb.special_ids[t]) >= n for ex in examples for t in stage3.TOKEN_NAMES.values())


def test_order_is_the_callers_and_deterministic(setup) -> None:
    _, bb, model, _ = setup
    examples = _examples(setup, 1)
    forward = score_examples(bb, examples, batch_size=4, score_fn="double_softmax", model=model)
    backward = score_examples(bb, examples[::-1], batch_size=4, score_fn="double_softmax", model=model)
    again = score_examples(bb, examples, batch_size=4, score_fn="double_softmax", model=model)
    np.testing.assert_allclose(backward[::-1], forward, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(again, forward)


def test_forced_plain_path_runs_whole_prompts_in_caller_order(setup) -> None:
    _, bb, model, _ = setup
    examples = _examples(setup, 1, n=8)
    calls, handle = _body_widths(model)
    try:
        plain = score_examples(bb, examples, batch_size=4, score_fn="two_way_softmax", model=model,
                               sort_by_length=False, share_prefix=False)
    finally:
        handle.remove()
    assert calls == [(4, max(len(e.ids) for e in examples[i: i + 4]), False) for i in (0, 4)]
    np.testing.assert_allclose(plain, _alone(setup, examples), rtol=0, atol=1e-5)


def test_short_common_prefix_falls_back_to_the_plain_path(setup) -> None:
    _, bb, model, _ = setup
    examples = _examples(setup, 1, n=6)
    # Dropping a different number of leading tokens per prompt leaves no common prefix.
    examples = [replace(e, ids=e.ids[k:], n_prefix=e.n_prefix - k) for k, e in enumerate(examples)]
    assert common_prefix_length(examples) < MIN_SHARED_PREFIX
    calls, handle = _body_widths(model)
    try:
        fast = score_examples(bb, examples, batch_size=3, score_fn="two_way_softmax", model=model)
    finally:
        handle.remove()
    assert len(calls) == 2 and not any(has_cache for *_, has_cache in calls)
    np.testing.assert_allclose(fast, _alone(setup, examples), rtol=0, atol=1e-5)


def test_prefix_stops_before_a_vector_written_inside_it(setup) -> None:
    _, bb, model, _ = setup
    examples = _examples(setup, 1, n=8)
    cut = MIN_SHARED_PREFIX + 4
    assert common_prefix_length(examples) > cut
    token_embedding = model.get_input_embeddings()

    def embed(batch):  # a per-user vector written at column `cut`, inside the common token prefix
        embeds = token_embedding(batch.input_ids)  # (B, T, D)
        bump = torch.zeros_like(embeds)
        bump[:, cut] = batch.users.float().unsqueeze(1) / 10
        return embeds + bump

    with torch.inference_mode():
        prefix = build_shared_prefix(model, examples, pad_id=bb.tokenizer.pad_token_id, device=bb.device,
                                     embed=embed)
    assert prefix is not None and prefix.length == cut
    fast = score_examples(bb, examples, batch_size=4, score_fn="two_way_softmax", model=model, embed=embed)
    np.testing.assert_allclose(fast, _alone(setup, examples, embed), rtol=0, atol=1e-5)
