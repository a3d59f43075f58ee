"""Stage-3 projectors (METHOD.md §5.3): shapes and parameter counts against hand-written formulas, warm-up init."""

from __future__ import annotations

import math
import typing

import pytest
import torch
from torch import nn

from sellarec.config import CollabProjectorConfig, SemanticProjectorConfig
from sellarec.errors import ConfigError
from sellarec.models.projector import (COLLAB_PROJECTORS, SEMANTIC_PROJECTORS, build_collab_projector,
                                       build_semantic_projector, warmup_init)

GELU_LIPSCHITZ = 1.13  # max |GELU'(x)| = 1.1289 (at x ~ 0.75)


# --- hand-written parameter counts

def _mlp_count(i: int, h: int, o: int) -> int:
    return i * h + h + h * o + o


COLLAB_COUNTS = {
    "mlp": lambda i, o, h, k: _mlp_count(i, h, o),
    "linear": lambda i, o, h, k: i * o + o,
    "mlp_residual": lambda i, o, h, k: _mlp_count(i, h, o) + i * o,
    "moe": lambda i, o, h, k: k * _mlp_count(i, h, o) + i * k + k,
}
SEMANTIC_COUNTS = {
    "linear": lambda d, r, h: d * d + d,
    "lowrank": lambda d, r, h: d * r + r * d + d,
    "mlp": lambda d, r, h: _mlp_count(d, h, d),
}

# (in_dim, out_dim, hidden, num_experts) and (dim, rank, hidden)
COLLAB_SIZES = [(8, 12, 16, 2), (5, 7, 3, 4)]
SEMANTIC_SIZES = [(12, 4, 16), (7, 2, 3)]
COLLAB_CASES = [(t, *s) for t in COLLAB_COUNTS for s in COLLAB_SIZES]
SEMANTIC_CASES = [(t, *s) for t in SEMANTIC_COUNTS for s in SEMANTIC_SIZES]


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _stage2_proj(i: int, h: int, o: int) -> nn.Sequential:
    """Stage 2's ``AlignedMF.proj`` layout (sellarec/models/mf.py), written out independently."""
    return nn.Sequential(nn.Linear(i, h), nn.GELU(approximate="none"), nn.Linear(h, o))


# --- registry

def test_registry_keys_are_the_config_choices() -> None:
    collab = typing.get_args(typing.get_type_hints(CollabProjectorConfig)["type"])
    semantic = typing.get_args(typing.get_type_hints(SemanticProjectorConfig)["type"])
    assert set(COLLAB_PROJECTORS) == set(collab) and len(collab) == len(COLLAB_PROJECTORS)
    assert set(SEMANTIC_PROJECTORS) == set(semantic) and len(semantic) == len(SEMANTIC_PROJECTORS)
    assert set(COLLAB_COUNTS) == set(collab) and set(SEMANTIC_COUNTS) == set(semantic)  # the tables cover all


def test_unknown_type_lists_registered_names() -> None:
    with pytest.raises(ConfigError, match=r"stage3\.collab_projector\.type='bogus' is not one of mlp, linear, "):
        build_collab_projector(CollabProjectorConfig(type="bogus"), 4, 4)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"stage3\.semantic_projector\.type='bogus' is not one of linear, "):
        build_semantic_projector(SemanticProjectorConfig(type="bogus"), 4)  # type: ignore[arg-type]


# --- shapes and parameter counts

@pytest.mark.parametrize("kind,in_dim,out_dim,hidden,k", COLLAB_CASES)
def test_collab_shape_and_count(kind: str, in_dim: int, out_dim: int, hidden: int, k: int) -> None:
    proj = build_collab_projector(CollabProjectorConfig(type=kind, hidden=hidden, num_experts=k), in_dim, out_dim)
    assert proj(torch.randn(3, in_dim)).shape == (3, out_dim)
    assert proj(torch.randn(2, 5, in_dim)).shape == (2, 5, out_dim)
    assert _n_params(proj) == COLLAB_COUNTS[kind](in_dim, out_dim, hidden, k)


@pytest.mark.parametrize("kind,dim,rank,hidden", SEMANTIC_CASES)
def test_semantic_shape_and_count(kind: str, dim: int, rank: int, hidden: int) -> None:
    proj = build_semantic_projector(SemanticProjectorConfig(type=kind, rank=rank, hidden=hidden), dim)
    assert proj(torch.randn(3, dim)).shape == (3, dim)
    assert proj(torch.randn(2, 5, dim)).shape == (2, 5, dim)
    assert _n_params(proj) == SEMANTIC_COUNTS[kind](dim, rank, hidden)


# --- gradients

def _assert_all_grads_nonzero(proj: nn.Module, x: torch.Tensor) -> None:
    proj(x).sum().backward()
    for name, p in proj.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", list(COLLAB_COUNTS))
def test_collab_gradients_reach_every_parameter(kind: str) -> None:
    torch.manual_seed(0)
    proj = build_collab_projector(CollabProjectorConfig(type=kind, hidden=16, num_experts=3), 8, 12)
    _assert_all_grads_nonzero(proj, torch.randn(4, 2, 8))


@pytest.mark.parametrize("kind", ["mlp_residual", "moe"])
def test_gradients_after_warmup(kind: str) -> None:
    # zero-init skip and zero gate must still learn: their grads are nonzero even though the values are zero
    torch.manual_seed(0)
    cfg = CollabProjectorConfig(type=kind, hidden=16, num_experts=3)
    proj = build_collab_projector(cfg, 8, 12)
    warmup_init(proj, cfg, _stage2_proj(8, 16, 12), seed=0)
    _assert_all_grads_nonzero(proj, torch.randn(4, 8))


@pytest.mark.parametrize("kind", list(SEMANTIC_COUNTS))
def test_semantic_gradients_reach_every_parameter(kind: str) -> None:
    torch.manual_seed(0)
    proj = build_semantic_projector(SemanticProjectorConfig(type=kind, rank=3, hidden=10), 12)
    _assert_all_grads_nonzero(proj, torch.randn(4, 12))


# --- warm-up init

@pytest.mark.parametrize("kind", ["mlp", "mlp_residual"])
def test_warmup_reproduces_stage2_exactly(kind: str) -> None:
    torch.manual_seed(0)
    stage2 = _stage2_proj(8, 16, 12)
    cfg = CollabProjectorConfig(type=kind, hidden=16)
    proj = build_collab_projector(cfg, 8, 12)
    x = torch.randn(6, 3, 8)
    assert not torch.equal(proj(x), stage2(x))
    warmup_init(proj, cfg, stage2, seed=0)
    assert torch.equal(proj(x), stage2(x))
    if kind == "mlp_residual":
        assert torch.count_nonzero(proj.skip.weight) == 0


def _moe_noise(proj: nn.Module, stage2: nn.Sequential) -> list[list[torch.Tensor]]:
    """Per expert, ``expert param - stage2 param`` for (W1, b1, W2, b2)."""
    return [[pe - ps for pe, ps in zip(e.parameters(), stage2.parameters())] for e in proj.experts]


def test_warmup_moe_is_stage2_plus_small_seeded_noise() -> None:
    i, h, o, k = 32, 64, 48, 4
    torch.manual_seed(0)
    stage2 = _stage2_proj(i, h, o)
    cfg = CollabProjectorConfig(type="moe", hidden=h, num_experts=k)
    proj = build_collab_projector(cfg, i, o)
    rng_before = torch.get_rng_state()
    warmup_init(proj, cfg, stage2, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_before)  # noise comes from its own generator
    assert torch.count_nonzero(proj.gate.weight) == 0 and torch.count_nonzero(proj.gate.bias) == 0

    # the noise is N(0, 0.02): ~21k draws, so the std estimate is within ~0.1% (1 sigma) of 0.02
    noise = _moe_noise(proj, stage2)
    flat = torch.cat([n.flatten() for per_expert in noise for n in per_expert])
    assert abs(flat.mean().item()) < 4 * 0.02 / math.sqrt(flat.numel())
    assert 0.019 < flat.std().item() < 0.021
    for a in range(k):
        for b in range(a + 1, k):
            assert not torch.equal(noise[a][0], noise[b][0])  # experts differ

    # uniform gate: moe(x) - f(x) = mean_k (expert_k(x) - f(x)). With expert = (W2+N2) g((W1+N1)x + b1+n1) + b2+n2,
    # |expert_k(x) - f(x)| <= |W2+N2| L (|N1| |x| + |n1|) + |N2| |g(W1 x + b1)| + |n2|  (spectral norms, L = Lip(g)).
    x = torch.randn(100, i)
    with torch.no_grad():
        ref, out = stage2(x), proj(x)
        hid = nn.functional.gelu(stage2[0](x))  # (B, h)
        bound = torch.zeros(x.shape[0])
        for e, (n1, nb1, n2, nb2) in zip(proj.experts, noise):
            spec = lambda m: torch.linalg.matrix_norm(m, ord=2)  # noqa: E731
            bound += (spec(e[2].weight) * GELU_LIPSCHITZ * (spec(n1) * x.norm(dim=-1) + nb1.norm())
                      + spec(n2) * hid.norm(dim=-1) + nb2.norm())
        bound /= k
    diff = (out - ref).norm(dim=-1)  # (B,)
    assert torch.all(diff <= bound + 1e-5)
    assert not torch.equal(out, ref)
    # and small in practice: well under the output's own scale, and far closer than an untrained moe
    fresh = build_collab_projector(cfg, i, o)
    with torch.no_grad():
        fresh_diff = (fresh(x) - ref).norm(dim=-1)
    assert diff.mean() < 0.3 * ref.norm(dim=-1).mean()
    assert diff.mean() < 0.3 * fresh_diff.mean()


def test_warmup_moe_same_seed_same_weights() -> None:
    stage2 = _stage2_proj(8, 16, 12)
    cfg = CollabProjectorConfig(type="moe", hidden=16, num_experts=3)
    states = []
    for global_seed, seed in ((0, 3), (1, 3), (0, 4)):
        torch.manual_seed(global_seed)  # the global RNG changes the fresh init but not the warm-up result
        proj = build_collab_projector(cfg, 8, 12)
        warmup_init(proj, cfg, stage2, seed=seed)
        states.append(proj.state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert not all(torch.equal(states[0][key], states[2][key]) for key in states[0])


def test_warmup_linear_raises() -> None:
    cfg = CollabProjectorConfig(type="linear")
    with pytest.raises(ConfigError, match=r"projector_init='warmup'.*projector_init=random"):
        warmup_init(build_collab_projector(cfg, 8, 12), cfg, _stage2_proj(8, 16, 12), seed=0)


@pytest.mark.parametrize("kind", ["mlp", "mlp_residual", "moe"])
def test_warmup_hidden_mismatch_names_both_keys(kind: str) -> None:
    cfg = CollabProjectorConfig(type=kind, hidden=20)
    with pytest.raises(ConfigError, match=r"stage3\.collab_projector\.hidden=20 .*stage2\.proj_hidden=16"):
        warmup_init(build_collab_projector(cfg, 8, 12), cfg, _stage2_proj(8, 16, 12), seed=0)


@pytest.mark.parametrize("in_dim,out_dim", [(9, 12), (8, 13)])
def test_warmup_dim_mismatch_raises(in_dim: int, out_dim: int) -> None:
    cfg = CollabProjectorConfig(type="mlp", hidden=16)
    with pytest.raises(ConfigError, match=r"stage 2's projection maps 8 -> 12 .*stage2\.emb_dim"):
        warmup_init(build_collab_projector(cfg, in_dim, out_dim), cfg, _stage2_proj(8, 16, 12), seed=0)
