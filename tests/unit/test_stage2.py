"""Stage 2b: MF + alignment losses (METHOD.md §4.1-§4.3) against hand-written formulas and a planted signal."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from sellarec.config import DataConfig, Stage2Config
from sellarec.data.dataset import Dataset
from sellarec.errors import ConfigError
from sellarec.models.mf import AlignedMF, alignment_loss, infonce_loss, rince_loss
from sellarec.stages import stage2
from sellarec.stages.stage2 import train_collab

NUM_USERS, NUM_ITEMS, D_LLM = 16, 20, 16  # real ids 1..24 and 1..20
FAST = dict(emb_dim=8, proj_hidden=16, batch_size=32, lr=5e-2, weight_decay=0.0)


# --- hand-written references (python floats, no module code)

def _normalize(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in row))
    return [x / norm for x in row]


def _sims(anchor: torch.Tensor, candidates: torch.Tensor, tau: float) -> list[list[float]]:
    a = [_normalize(r) for r in anchor.tolist()]
    b = [_normalize(r) for r in candidates.tolist()]
    return [[sum(x * y for x, y in zip(a[k], b[j])) / tau for j in range(len(b))] for k in range(len(a))]


def _rince_by_hand(anchor, candidates, tau, q, lam) -> float:
    """METHOD.md §4.2 literally: mean_k[-e^{q s_kk}/q] + mean_k[(lam (e^{s_kk} + sum_j e^{s_kj}))^q / q]."""
    s = _sims(anchor, candidates, tau)
    n = len(s)
    first = sum(-math.exp(q * s[k][k]) / q for k in range(n)) / n
    second = sum((lam * (math.exp(s[k][k]) + sum(math.exp(s[k][j]) for j in range(n)))) ** q / q
                 for k in range(n)) / n
    return first + second


def _infonce_by_hand(anchor, candidates, tau, positive_copies: int) -> float:
    """mean_k[-s_kk + log(c e^{s_kk} + sum_{j != k} e^{s_kj})] with the positive counted ``positive_copies`` times."""
    s = _sims(anchor, candidates, tau)
    n = len(s)
    return sum(-s[k][k] + math.log(positive_copies * math.exp(s[k][k])
                                   + sum(math.exp(s[k][j]) for j in range(n) if j != k)) for k in range(n)) / n


# --- losses

def test_rince_matches_the_formula_with_duplicates_kept_as_negatives():
    gen = torch.Generator().manual_seed(0)
    sem, mf = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    items = torch.tensor([1, 4, 2, 4, 5, 1])  # duplicates stay rows, as in the official code
    got = rince_loss(sem[items], mf[items], tau=0.2, q=0.01, lam=0.1)
    assert got.item() == pytest.approx(_rince_by_hand(sem[items], mf[items], 0.2, 0.01, 0.1), abs=1e-4)
    other = rince_loss(sem[items], mf[items], tau=0.5, q=0.3, lam=2.0)
    assert other.item() == pytest.approx(_rince_by_hand(sem[items], mf[items], 0.5, 0.3, 2.0), rel=1e-4)


def test_rince_on_distinct_rows_expanded_by_index_is_the_same_loss_and_gradient():
    gen = torch.Generator().manual_seed(7)
    sem, mf = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen, requires_grad=True)
    items = torch.tensor([1, 4, 2, 4, 5, 1, 1])
    full = rince_loss(sem[items], mf[items], 0.2, 0.01, 0.1)
    (full_grad,) = torch.autograd.grad(full, mf)
    distinct, rows = torch.unique(items, return_inverse=True)
    packed = rince_loss(sem[distinct], mf[distinct], 0.2, 0.01, 0.1, rows=rows)
    (packed_grad,) = torch.autograd.grad(packed, mf)
    assert packed.item() == pytest.approx(full.item(), abs=1e-6)
    assert torch.allclose(packed_grad, full_grad, atol=1e-6) and full_grad[items].abs().sum() > 0


def test_rince_tends_to_doubled_positive_infonce_as_q_goes_to_zero():
    # x^q/q = 1/q + log x + O(q log^2 x) and -e^{qs}/q = -1/q - s + O(q s^2): the 1/q cancel, so
    # rince -> log(lam) + mean_k[-s_kk + log(2 e^{s_kk} + sum_{j!=k} e^{s_kj})] (error ~ q * 50 here).
    gen = torch.Generator().manual_seed(1)
    anchor, cand = torch.randn(5, 7, generator=gen, dtype=torch.float64), torch.randn(5, 7, generator=gen,
                                                                                       dtype=torch.float64)
    lam = 0.1
    got = rince_loss(anchor, cand, tau=0.2, q=1e-6, lam=lam).item() - math.log(lam)
    assert got == pytest.approx(_infonce_by_hand(anchor, cand, 0.2, positive_copies=2), abs=1e-3)
    # The doubled positive matters: the ordinary InfoNCE value is measurably different.
    assert abs(got - _infonce_by_hand(anchor, cand, 0.2, positive_copies=1)) > 1e-2


def test_infonce_is_cross_entropy_over_distinct_items():
    gen = torch.Generator().manual_seed(2)
    sem, mf = torch.randn(8, 6, generator=gen), torch.randn(8, 6, generator=gen)
    distinct = torch.tensor([2, 3, 5, 7])
    a, b = sem[distinct], mf[distinct]
    cosine = (a @ b.T) / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :])
    expected = F.cross_entropy(cosine / 0.2, torch.arange(4)).item()
    with_dups = torch.tensor([5, 2, 5, 3, 7, 2, 2])
    assert infonce_loss(a, b, 0.2).item() == pytest.approx(expected, abs=1e-5)
    assert infonce_loss(sem[with_dups], mf[with_dups], 0.2, items=with_dups).item() == pytest.approx(expected,
                                                                                                      abs=1e-5)
    assert _infonce_by_hand(a, b, 0.2, positive_copies=1) == pytest.approx(expected, abs=1e-4)


def test_alignment_loss_dispatch_uses_model_tables():
    torch.manual_seed(3)
    model = AlignedMF(4, 9, 6, semantic=torch.randn(9, D_LLM), proj_hidden=12)
    items = torch.tensor([1, 3, 3, 8, 1])
    with torch.no_grad():
        sem, proj = model.item_sem.weight, model.project_items(torch.arange(9))
        rince = alignment_loss("rince", model, items, tau=0.2, q=0.01, lam=0.1).item()
        info = alignment_loss("infonce", model, items, tau=0.2).item()
    assert rince == pytest.approx(_rince_by_hand(sem[items], proj[items], 0.2, 0.01, 0.1), abs=1e-4)
    distinct = torch.tensor([1, 3, 8])
    assert info == pytest.approx(_infonce_by_hand(sem[distinct], proj[distinct], 0.2, 1), abs=1e-4)
    assert alignment_loss("none", model, items, tau=0.2).item() == 0.0


@pytest.mark.parametrize("kind", ["rince", "infonce"])
@pytest.mark.parametrize("train_semantic", [True, False])
def test_alignment_gradients_reach_item_emb_proj_and_trainable_semantic(kind, train_semantic):
    torch.manual_seed(4)
    model = AlignedMF(5, 7, 4, semantic=torch.randn(7, 10), proj_hidden=8, train_semantic=train_semantic)
    alignment_loss(kind, model, torch.tensor([1, 2, 2, 3]), tau=0.2).backward()
    row_grad = model.item_emb.weight.grad.abs().sum(dim=1)
    assert (row_grad[[1, 2, 3]] > 0).all() and (row_grad[[0, 4, 5, 6]] == 0).all()
    assert model.proj[0].weight.grad.abs().sum() > 0 and model.proj[2].weight.grad.abs().sum() > 0
    assert model.user_emb.weight.grad is None
    if train_semantic:
        assert model.item_sem.weight.grad[[1, 2, 3]].abs().sum() > 0
    else:
        assert not model.item_sem.weight.requires_grad and model.item_sem.weight.grad is None


def test_projection_is_linear_exact_gelu_linear():
    torch.manual_seed(6)
    model = AlignedMF(3, 4, 2, semantic=torch.randn(4, 3), proj_hidden=5)
    w1, b1 = model.proj[0].weight.tolist(), model.proj[0].bias.tolist()
    w2, b2 = model.proj[2].weight.tolist(), model.proj[2].bias.tolist()
    x = model.item_emb.weight[2].tolist()
    hidden = [sum(w * v for w, v in zip(w1[h], x)) + b1[h] for h in range(5)]
    hidden = [0.5 * z * (1 + math.erf(z / math.sqrt(2))) for z in hidden]  # exact (erf) GELU
    expected = [sum(w * v for w, v in zip(w2[o], hidden)) + b2[o] for o in range(3)]
    assert model.project_items(torch.tensor([2]))[0].tolist() == pytest.approx(expected, abs=1e-5)
    users, items = torch.tensor([1, 2]), torch.tensor([3, 1])
    scores = (model.user_emb.weight[users] * model.item_emb.weight[items]).sum(1)
    assert torch.allclose(model(users, items), scores)
    assert model.proj[1].approximate == "none"
    assert model.item_emb.padding_idx == 0 and model.user_emb.padding_idx == 0 and model.item_sem.padding_idx == 0


# --- training on a planted signal

def _planted_dataset(train_noise: float = 0.0) -> Dataset:
    """Even users like even items, odd users odd items; per user 14 train, 3 valid, 3 test items at random.

    ``train_noise`` flips that share of train labels at random (something to overfit).
    """
    rng = np.random.default_rng(0)
    rows = []
    for user in range(1, NUM_USERS + 1):
        order = rng.permutation(np.arange(1, NUM_ITEMS + 1))
        for pos, item in enumerate(order):
            split = "train" if pos < 14 else "valid" if pos < 17 else "test"
            label = int(item % 2 == user % 2) ^ int(split == "train" and rng.random() < train_noise)
            rows.append({"user": user, "item": int(item), "label": label, "split": split, "rating": 5 - 4 * (1 - label),
                         "timestamp": user * 100 + pos, "history": [], "n_prior_pos": 0 if pos < 2 else 1})
    frame = pd.DataFrame(rows)
    frame["user_train_count"], frame["item_train_count"] = 14, 16
    frame["cold"], frame["warm_sella"], frame["warm_collm"] = False, True, True
    titles = [""] + [f"item {i}" for i in range(1, NUM_ITEMS + 1)]
    return Dataset("synthetic", "item", frame, titles, "test", DataConfig())


@pytest.fixture(scope="module")
def planted() -> Dataset:
    return _planted_dataset()


@pytest.fixture(scope="module")
def semantic() -> torch.Tensor:
    return torch.randn(NUM_ITEMS + 1, D_LLM, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("align", ["rince", "infonce"])
def test_training_learns_the_signal_and_aligns(planted, semantic, align):
    cfg = Stage2Config(**FAST, max_epochs=12, patience=12, align=align)
    seen = []
    result = train_collab(cfg, planted, semantic, seed=0, on_epoch=lambda epoch, record: seen.append(epoch))
    assert result.metrics["valid/auc"] > 0.8 and result.metrics["test/auc"] > 0.8
    assert result.metrics["valid/auc"] == pytest.approx(max(r["valid/auc"] for r in result.history))
    assert result.history[result.best_epoch - 1]["valid/auc"] == pytest.approx(result.metrics["valid/auc"])
    assert result.align["cos_after"] > result.align["cos_before"] + 0.1
    assert seen == list(range(1, result.epochs_run + 1)) == [r["epoch"] for r in result.history]
    assert not result.model.training
    assert {"valid_warm/auc", "test_cold/uauc", "test/uauc"} <= result.metrics.keys()


def test_plain_mf_builds_no_semantic_table(planted):
    cfg = Stage2Config(**FAST, max_epochs=12, patience=12, align="none")
    result = train_collab(cfg, planted, None, seed=0)
    assert result.align is None
    assert result.model.item_sem is None and result.model.proj is None
    n_params = sum(p.numel() for p in result.model.parameters())
    assert n_params == (NUM_USERS + 1 + NUM_ITEMS + 1) * cfg.emb_dim
    assert result.metrics["valid/auc"] > 0.8
    assert all(r["train/align_loss"] == 0.0 for r in result.history)


def test_aligned_run_without_semantic_table_is_a_config_error(planted):
    with pytest.raises(ConfigError, match="stage2.align='rince' needs the semantic item table"):
        train_collab(Stage2Config(**FAST, align="rince"), planted, None, seed=0)


def test_frozen_semantic_stays_put_and_input_is_never_modified(planted, semantic):
    before = semantic.clone()
    frozen = train_collab(Stage2Config(**FAST, max_epochs=3, align="rince", train_semantic=False), planted,
                          semantic, seed=0)
    assert torch.equal(frozen.model.item_sem.weight, before)
    trained = train_collab(Stage2Config(**FAST, max_epochs=3, align="rince"), planted, semantic, seed=0)
    assert not torch.equal(trained.model.item_sem.weight, before)
    assert torch.equal(semantic, before)


def test_best_valid_state_is_restored(semantic):
    cfg = Stage2Config(**{**FAST, "lr": 0.3}, max_epochs=30, patience=3, align="rince")
    result = train_collab(cfg, _planted_dataset(train_noise=0.3), semantic, seed=0)  # overfits the noise
    best = result.history[result.best_epoch - 1]["valid/auc"]
    assert result.history[-1]["valid/auc"] < best  # precondition: the last epoch is worse than the best one
    assert result.epochs_run == result.best_epoch + cfg.patience
    assert result.metrics["valid/auc"] == pytest.approx(best, abs=1e-9)


def test_early_stopping_when_nothing_improves(planted, semantic):
    cfg = Stage2Config(**{**FAST, "lr": 1e-9}, max_epochs=50, patience=2, align="rince")
    result = train_collab(cfg, planted, semantic, seed=0)
    assert result.epochs_run <= cfg.patience + 1
    assert result.best_epoch == 1


def test_abort_rule_stops_a_dead_run(planted, monkeypatch):
    monkeypatch.setattr(stage2, "ABORT_AFTER_EPOCH", 3)
    monkeypatch.setattr(stage2, "ABORT_AUC_FLOOR", 1.01)  # every AUC counts as dead
    result = train_collab(Stage2Config(**FAST, max_epochs=50, patience=50, align="none"), planted, None, seed=0)
    assert result.epochs_run == 4


def test_train_on_filtered_skips_rows_without_history(planted):
    # Item 20's train rows all lack a history, so 'filtered' never sees it: with no weight decay Adam leaves its
    # embedding at the seeded init (read from a run too slow to move anything), while 'raw' trains it.
    frame = planted.interactions.copy()
    frame.loc[(frame["item"] == NUM_ITEMS) & (frame["split"] == "train"), "n_prior_pos"] = 0
    ds = Dataset("synthetic", "item", frame, planted.titles, "test", planted.config)
    runs = {name: train_collab(Stage2Config(**{**FAST, **extra}, max_epochs=3, align="none"), ds, None, seed=0)
            for name, extra in (("init", {"lr": 1e-9}), ("raw", {}), ("filtered", {"train_on": "filtered"}))}
    rows = {name: run.model.item_emb.weight[NUM_ITEMS] for name, run in runs.items()}
    assert torch.allclose(rows["filtered"], rows["init"], atol=1e-6)
    assert not torch.allclose(rows["raw"], rows["init"], atol=1e-2)
    assert not torch.allclose(runs["filtered"].model.item_emb.weight[1], runs["init"].model.item_emb.weight[1],
                              atol=1e-2)


def test_same_seed_same_result_other_seed_other_parameters(planted, semantic):
    cfg = Stage2Config(**FAST, max_epochs=4, patience=4, align="rince")
    torch.manual_seed(1)
    global_state = torch.get_rng_state()
    first = train_collab(cfg, planted, semantic, seed=7)
    assert torch.equal(torch.get_rng_state(), global_state)  # seeding does not leak into the global RNG
    torch.rand(3)  # a different global state must not matter
    again = train_collab(cfg, planted, semantic, seed=7)
    other = train_collab(cfg, planted, semantic, seed=8)
    np.testing.assert_equal(first.metrics, again.metrics)  # NaN == NaN here (empty cold slice)
    assert torch.equal(first.model.item_emb.weight, again.model.item_emb.weight)
    assert not torch.equal(first.model.item_emb.weight, other.model.item_emb.weight)
    assert first.metrics != other.metrics
