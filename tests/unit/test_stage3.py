"""Stage 3 on the tiny backbone: injection, warm-up init, fast step == official step, token subsets, designs."""

from __future__ import annotations

import pytest
import torch

from sellarec.config import CollabProjectorConfig, EvalConfig, SemanticProjectorConfig, Stage3Config
from sellarec.data.batches import build_examples, collate, sample_rows
from sellarec.errors import ConfigError
from sellarec.models.mf import AlignedMF
from sellarec.stages import stage3

from conftest import TINY_EMB as EMB, TINY_HIDDEN as HIDDEN  # the tiny_stage3_parts fixture's sizes


@pytest.fixture(scope="module")
def setup(tiny_stage3_parts):
    return tiny_stage3_parts


def _cfg(**kw) -> Stage3Config:
    base = dict(collab_projector=CollabProjectorConfig(hidden=HIDDEN), semantic_projector=SemanticProjectorConfig(
        rank=4, hidden=HIDDEN))
    return Stage3Config(**{**base, **kw})


def _batch(setup, tokens=("user", "item", "warm"), n=6, with_answer=True):
    ds, bb, *_ = setup
    rows = ds.split("train").head(n)
    examples = build_examples(ds, rows, bb.tokenizer, stage=3, tokens=tokens, max_length=512, with_answer=with_answer)
    return collate(examples, bb.tokenizer.pad_token_id)


def test_warmup_init_equals_stage2_projection_at_step_0(setup) -> None:
    ds, bb, model, mf, semantic = setup
    injector = stage3.build_injector(_cfg(), mf, semantic, bb, seed=0)
    x = torch.randn(5, EMB)
    torch.testing.assert_close(injector.collab(x), mf.proj(x), rtol=0, atol=0)
    random = stage3.build_injector(_cfg(projector_init="random"), mf, semantic, bb, seed=0)
    assert not torch.allclose(random.collab(x), mf.proj(x))


def test_each_token_is_injected_exactly_once_per_prompt(setup) -> None:
    ds, bb, model, mf, semantic = setup
    injector = stage3.build_injector(_cfg(), mf, semantic, bb, seed=0)
    batch = _batch(setup)
    embeds = injector(batch.input_ids, batch.users, batch.items, model.get_input_embeddings())
    plain = model.get_input_embeddings()(batch.input_ids)
    changed = (embeds != plain).any(dim=-1)                                     # (B, T)
    assert changed.sum(dim=1).tolist() == [3] * batch.input_ids.shape[0]
    vectors = injector.token_vectors(batch.users, batch.items)
    for name, token in (("user", "<User_ID>"), ("item", "<Item_ID>"), ("warm", "<Warm_ID>")):
        rows, cols = (batch.input_ids == bb.special_ids[token]).nonzero(as_tuple=True)
        assert rows.tolist() == list(range(batch.input_ids.shape[0]))           # one position per prompt
        torch.testing.assert_close(embeds[rows, cols], vectors[name])


def _grads(loss_fn, injector):
    injector.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in injector.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tokens", [("user", "item", "warm"), ("item",), ("warm", "user")])
def test_fast_step_equals_official_step(setup, tokens) -> None:
    ds, bb, model, mf, semantic = setup
    model.eval()                                                                # no dropout: exact comparison
    injector = stage3.build_injector(_cfg(tokens=tokens), mf, semantic, bb, seed=0)
    batch = _batch(setup, tokens=tokens, n=8)
    official_loss, official = _grads(lambda: stage3.official_loss(model, injector, batch, pad_to=512), injector)
    fast_loss, fast = _grads(lambda: stage3.fast_loss(model, injector, batch), injector)
    assert fast_loss == pytest.approx(official_loss, rel=1e-5)
    assert set(fast) == set(official) and fast
    for name in official:
        torch.testing.assert_close(fast[name], official[name], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("collab_type", ["mlp", "linear", "mlp_residual", "moe"])
@pytest.mark.parametrize("semantic_type", ["linear", "lowrank"])
def test_projector_designs_train_and_score(setup, collab_type, semantic_type) -> None:
    ds, bb, model, mf, semantic = setup
    init = "random" if collab_type == "linear" else "warmup"
    cfg = _cfg(collab_projector=CollabProjectorConfig(type=collab_type, hidden=HIDDEN, num_experts=2),
               semantic_projector=SemanticProjectorConfig(type=semantic_type, rank=4, hidden=HIDDEN),
               projector_init=init, lr=1e-2, batch_size=4, grad_accum=1, max_train_samples=8)
    valid = sample_rows(ds.split("valid"), 12, 0)
    test = sample_rows(ds.split("test"), 12, 1)
    before = {k: v.clone() for k, v in stage3.build_injector(cfg, mf, semantic, bb, seed=3).state_dict().items()}
    out = stage3.run(cfg, EvalConfig(bootstrap_samples=0), ds, bb, model, mf, semantic, valid_rows=valid,
                     test_rows=test, max_length=512, seed=3)
    out.metrics.update(stage3.evaluate_test(cfg, EvalConfig(bootstrap_samples=0), ds, bb, out.model, out.injector,
                                            test_rows=test, max_length=512, seed=3))
    assert out.steps == 2 and out.trainable_params > 0
    after = out.injector.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)           # something trained
    for key in ("valid/auc", "test/auc", "test/uauc", "test_warm/auc", "test_cold/uauc"):
        assert key in out.metrics


def test_trainable_flags_freeze_what_they_say(setup) -> None:
    ds, bb, model, mf, semantic = setup
    cfg = _cfg(train_user_emb=False, train_semantic=False)
    injector = stage3.build_injector(cfg, mf, semantic, bb, seed=0)
    assert not injector.user_emb.weight.requires_grad and not injector.item_sem.weight.requires_grad
    assert injector.item_emb.weight.requires_grad
    counted = sum(p.numel() for p in injector.parameters() if p.requires_grad)
    expected = mf.item_emb.weight.numel() + sum(p.numel() for p in injector.collab.parameters()) + \
        sum(p.numel() for p in injector.semantic.parameters())
    assert counted == expected


def test_warmup_without_alignment_is_a_config_error(setup) -> None:
    ds, bb, model, _, semantic = setup
    plain = AlignedMF(ds.num_users, ds.num_items, EMB)
    with pytest.raises(ConfigError, match="stage2.align='none' trains none"):
        stage3.build_injector(_cfg(), plain, semantic, bb, seed=0)
    injector = stage3.build_injector(_cfg(projector_init="random"), plain, semantic, bb, seed=0)
    torch.testing.assert_close(injector.item_sem.weight, semantic)               # distilled table feeds <Warm_ID>


def test_empty_token_set_is_a_config_error(setup) -> None:
    ds, bb, model, mf, semantic = setup
    with pytest.raises(ConfigError, match="stage3.tokens is empty"):
        stage3.run(_cfg(tokens=()), EvalConfig(), ds, bb, model, mf, semantic, valid_rows=ds.split("valid"),
                   test_rows=ds.split("test"), max_length=512, seed=0)


def test_fast_step_without_prefix_value_has_the_same_gradients(setup) -> None:
    ds, bb, model, mf, semantic = setup
    model.eval()
    injector = stage3.build_injector(_cfg(), mf, semantic, bb, seed=0)
    batch = _batch(setup, n=8)
    full_loss, full = _grads(lambda: stage3.fast_loss(model, injector, batch), injector)
    part_loss, part = _grads(lambda: stage3.fast_loss(model, injector, batch, exact_value=False), injector)
    assert part_loss < full_loss                                           # the prefix terms are left out ...
    for name in full:                                                      # ... and carry no gradient
        torch.testing.assert_close(part[name], full[name], rtol=1e-5, atol=1e-8)


def test_prefix_alignment_keeps_each_row_intact(setup) -> None:
    _, bb, model, mf, semantic = setup
    injector = stage3.build_injector(_cfg(), mf, semantic, bb, seed=0)
    batch = _batch(setup, n=8)
    first = injector.token_mask(batch.input_ids).float().argmax(dim=1)
    ids, mask, labels, positions, split = stage3._align_prefixes(batch, first)
    assert bool((ids[:, split] == bb.special_ids["<User_ID>"]).all())      # every row's first ID token, one column
    for row in range(ids.shape[0]):
        n = int(batch.attention_mask[row].sum())
        assert ids[row][mask[row] == 1].tolist() == batch.input_ids[row, :n].tolist()
        assert positions[row][mask[row] == 1].tolist() == list(range(n))
        kept = labels[row][labels[row] != -100].tolist()
        assert kept == batch.labels[row, 1:n].tolist()                     # targets 1..n-1, as the official shift


def test_token_norms_scale_with_the_projector_and_leave_the_vocabulary(setup) -> None:
    ds, bb, model, mf, semantic = setup
    injector = stage3.build_injector(_cfg(collab_projector=CollabProjectorConfig(type="linear"),
                                          projector_init="random"), mf, semantic, bb, seed=0)
    rows = ds.split("valid").head(20)
    before = stage3.token_norms(injector, model, rows, bb.device)
    assert set(before) == {"norms/user", "norms/item", "norms/warm", "norms/vocab"}
    with torch.no_grad():
        for p in injector.collab.parameters():
            p.mul_(3.0)                                   # a linear map: every output is 3x as long
    after = stage3.token_norms(injector, model, rows, bb.device)
    for name in ("user", "item"):
        assert after[f"norms/{name}"] == pytest.approx(3.0 * before[f"norms/{name}"], rel=1e-5)
    assert after["norms/warm"] == before["norms/warm"] and after["norms/vocab"] == before["norms/vocab"]
