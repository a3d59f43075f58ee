"""Prompt scoring on the tiny backbone: length-sorted batches, the common-prefix cache and the group-prefix caches give
the scores of the plain path (each prompt alone, in the caller's order), for stage-1 and stage-3 prompts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from sellarec.config import CollabProjectorConfig, SemanticProjectorConfig, Stage3Config
from sellarec.data.batches import Example, build_examples
from sellarec.data.prompts import ID_TOKENS
from sellarec.stages import stage3
from sellarec.stages import evaluation
from sellarec.stages.evaluation import (MIN_GROUP_PREFIX, MIN_SHARED_PREFIX, PrefixGroup, build_shared_prefix,
                                        common_prefix_length, decoder_and_head, group_by_prefix, score_examples)

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
        fast = score_examples(bb, examples, batch_size=4, score_fn="two_way_softmax", model=model, embed=embed,
                              group_prefixes=False)
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
        assert all(ex.ids.index(bb.special_ids[t]) >= n for ex in examples for t in ID_TOKENS.values())


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


def _ex(ids: list[int], n_prefix: int | None = None) -> Example:
    return Example(ids, len(ids) if n_prefix is None else n_prefix, 0, 0, 0, 0)


def test_group_by_prefix_by_hand() -> None:
    examples = [
        _ex([1, 2, 3, 4, 5, 6, 7, 9]),  # 0: shares 7 tokens with 1
        _ex([1, 2, 3, 4, 5, 6, 7, 8]),  # 1
        _ex([1, 2, 3, 4, 7, 7, 7]),     # 2: shares 4 with 0 and 1, fewer tokens saved than the pair's 5
        _ex([1, 2, 9, 9, 9]),           # 3: nothing past the 2 common tokens
        _ex([1, 2, 8, 8, 8, 8]),        # 4, 5: identical, capped before their answer position 5
        _ex([1, 2, 8, 8, 8, 8]),
        _ex([1, 2, 6, 6, 6]),           # 6: its whole prompt starts 7's; capped before its answer position 4
        _ex([1, 2, 6, 6, 6, 6, 6, 6]),  # 7
    ]
    assert group_by_prefix(examples, start=2, min_length=2) == [
        PrefixGroup([1, 0], 7), PrefixGroup([6, 7], 4), PrefixGroup([4, 5], 5)]
    # The three of 0, 1, 2 form one group when that saves more: 2 * (4 - 1) = 6 tokens against the pair's 7 - 1 = 6.
    assert group_by_prefix(examples[:3], start=1, min_length=2) == [PrefixGroup([1, 0, 2], 4)]
    assert group_by_prefix(examples, start=2, min_length=4) == [PrefixGroup([1, 0], 7)]
    assert group_by_prefix(examples[:1], start=0) == [] and group_by_prefix([], start=0) == []


def _grouped_examples(setup, stage: int) -> list[Example]:
    """Prompts of six users plus prompts sharing more than the template with another one: other targets after the
    same history (3 prompts; 7, more than a batch), an identical copy, and a prompt that starts with all of another
    one's tokens."""
    ds, bb, *_ = setup
    rows = ds.split("valid").drop_duplicates("user").head(6)

    def other_targets(row: int, n: int) -> pd.DataFrame:
        item = int(rows.iloc[row]["item"])
        return pd.concat([rows.iloc[[row]].assign(item=(item + k) % (ds.num_items - 1) + 1) for k in range(1, n + 1)])

    rows = pd.concat([rows, other_targets(1, 2), other_targets(2, 6), rows.iloc[[3]]])
    examples = build_examples(ds, rows, bb.tokenizer, stage=stage, tokens=("user", "item", "warm"), max_length=512,
                              with_answer=False)
    longer = examples[4]
    return examples + [replace(longer, ids=longer.ids + longer.ids[-3:], n_prefix=longer.n_prefix + 3)]


def _record_prefixes(monkeypatch) -> list[tuple[int, int]]:
    """Records (base length, prefix length) of every prefix run by score_examples."""
    built: list[tuple[int, int]] = []
    extend = evaluation.extend_prefix

    def recording(model, base, input_ids, inputs_embeds=None):
        built.append((0 if base is None else base.length, input_ids.shape[1]))
        return extend(model, base, input_ids, inputs_embeds)

    monkeypatch.setattr(evaluation, "extend_prefix", recording)
    return built


@pytest.mark.parametrize("stage", [1, 3])
def test_group_prefixes_give_the_plain_scores(setup, stage, monkeypatch) -> None:
    _, bb, model, _ = setup
    examples = _grouped_examples(setup, stage)
    embed = _embed(setup) if stage == 3 else None
    built = _record_prefixes(monkeypatch)
    fast = score_examples(bb, examples, batch_size=4, score_fn="two_way_softmax", model=model, embed=embed)
    plain = score_examples(bb, examples, batch_size=4, score_fn="two_way_softmax", model=model, embed=embed,
                           sort_by_length=False, share_prefix=False)
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast, _alone(setup, examples, embed), rtol=0, atol=1e-5)

    start = common_prefix_length(examples)
    groups = group_by_prefix(examples, start=start)
    assert built[0] == (0, start)
    assert len(groups) >= 4 and any(len(g.rows) > 4 for g in groups)  # a group is split into batches
    assert sum(len(g.rows) for g in groups) < len(examples)              # the batches mix in ungrouped prompts
    ids = [bb.special_ids[t] for t in ID_TOKENS.values()]
    first_id_token = [min((e.ids.index(t) for t in ids if t in e.ids), default=len(e.ids)) for e in examples]
    cut = [min([g.length] + [first_id_token[i] for i in g.rows]) if stage == 3 else g.length for g in groups]
    assert sorted(built[1:]) == sorted((start, n) for n in cut if n - start >= MIN_GROUP_PREFIX)
    assert len(built) > 1


def test_group_prefixes_stop_before_a_vector_written_inside_them(setup, monkeypatch) -> None:
    _, bb, model, _ = setup
    examples = _grouped_examples(setup, 1)
    start = common_prefix_length(examples)
    token_embedding = model.get_input_embeddings()

    def embed(batch):  # a per-user vector written MIN_GROUP_PREFIX // 2 tokens past the common prefix
        embeds = token_embedding(batch.input_ids)  # (B, T, D)
        bump = torch.zeros_like(embeds)
        bump[:, start + MIN_GROUP_PREFIX // 2] = batch.users.float().unsqueeze(1) / 10
        return embeds + bump

    built = _record_prefixes(monkeypatch)
    fast = score_examples(bb, examples, batch_size=4, score_fn="two_way_softmax", model=model, embed=embed)
    assert group_by_prefix(examples, start=start) and built == [(0, start)]  # every group left with too few tokens
    np.testing.assert_allclose(fast, _alone(setup, examples, embed), rtol=0, atol=1e-5)


def test_groups_without_a_common_prefix(setup, monkeypatch) -> None:
    _, bb, model, _ = setup
    examples = _grouped_examples(setup, 1)
    # Every other prompt loses its first token: nothing is common to all, but groups of either kind remain.
    examples = [replace(e, ids=e.ids[k % 2:], n_prefix=e.n_prefix - k % 2) for k, e in enumerate(examples)]
    assert common_prefix_length(examples) == 0 and group_by_prefix(examples, start=0)
    built = _record_prefixes(monkeypatch)
    fast = score_examples(bb, examples, batch_size=4, score_fn="two_way_softmax", model=model)
    assert built and all(base == 0 for base, _ in built)
    np.testing.assert_allclose(fast, _alone(setup, examples), rtol=0, atol=1e-5)


def test_scoring_without_a_bar_publishes_its_rows_done(setup, tmp_path, monkeypatch) -> None:
    """Trials score without progress bars; the status they publish still counts the rows scored batch by batch
    (a disabled tqdm bar never advances: the live progress line read 0/1500 until the end)."""
    from sellarec import status

    _, bb, model, _ = setup
    examples = _examples(setup, 1)
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(status, "_path", tmp_path / "s.json")   # publishing, as inside a trial
    monkeypatch.setattr(status, "write_json_atomic", lambda path, values: seen.append((values["done"],
                                                                                        values["total"])))
    monkeypatch.setattr(status, "MIN_WRITE_SECONDS", 0.0)
    score_examples(bb, examples, batch_size=4, score_fn="two_way_softmax", model=model, progress=False)
    assert seen[-1] == (len(examples), len(examples)) and len(seen) >= 3
    assert [done for done, _ in seen] == sorted(done for done, _ in seen) and seen[0][0] < len(examples)
