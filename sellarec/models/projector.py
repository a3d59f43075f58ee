"""The hybrid projection layer of stage 3: MF vectors and LLM item vectors -> ID-token embeddings (METHOD.md §5.3).

Two families, one registry each: collaborative projectors (``<User_ID>``/``<Item_ID>``, MF width -> LLM width) and
semantic projectors (``<Warm_ID>``, LLM width -> LLM width), plus the "warm-up" init that copies stage 2's trained
MF -> LLM projection into the collaborative projector.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from sellarec.config import CollabProjectorConfig, SemanticProjectorConfig
from sellarec.errors import ConfigError

__all__ = [
    "ResidualMLP", "GatedExperts", "COLLAB_PROJECTORS", "SEMANTIC_PROJECTORS", "build_collab_projector",
    "build_semantic_projector", "warmup_init",
]

MOE_NOISE_STD = 0.02  # std of the noise added to each expert's copy (official dormant MoE class)


def _mlp(in_dim: int, hidden: int, out_dim: int, activation: str = "gelu") -> nn.Sequential:
    """Linear -> GELU(exact) or ReLU -> Linear, laid out exactly like stage 2's ``AlignedMF.proj`` so state dicts
    match."""
    act = nn.GELU(approximate="none") if activation == "gelu" else nn.ReLU()
    return nn.Sequential(nn.Linear(in_dim, hidden), act, nn.Linear(hidden, out_dim))


class ResidualMLP(nn.Module):
    """``mlp(x) + skip(x)``: the paper's MLP plus a linear skip. x: (..., in_dim) -> (..., out_dim).

    ``skip`` (no bias) starts at zero, so at init, and after warm-up, the module computes exactly ``mlp(x)``;
    training can then grow the linear path.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, activation: str = "gelu") -> None:
        super().__init__()
        self.mlp = _mlp(in_dim, hidden, out_dim, activation)
        self.skip = nn.Linear(in_dim, out_dim, bias=False)
        nn.init.zeros_(self.skip.weight)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_dim) -> (..., out_dim)."""
        return self.mlp(x) + self.skip(x)


class GatedExperts(nn.Module):
    """Soft mixture of K expert MLPs: ``sum_k softmax(gate(x))_k * expert_k(x)``. x: (..., in_dim) -> (..., out_dim).

    A working version of the official code's dormant 4-expert projection (METHOD.md §5.3); every expert runs on
    every input (dense gating), which is cheap at projector sizes and keeps the gate differentiable.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_experts: int, activation: str = "gelu") -> None:
        super().__init__()
        self.experts = nn.ModuleList(_mlp(in_dim, hidden, out_dim, activation) for _ in range(num_experts))
        self.gate = nn.Linear(in_dim, num_experts)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_dim) -> (..., out_dim)."""
        weights = torch.softmax(self.gate(x), dim=-1)  # (..., K)
        outs = torch.stack([expert(x) for expert in self.experts], dim=-2)  # (..., K, out_dim)
        return (weights.unsqueeze(-1) * outs).sum(dim=-2)  # (..., out_dim)


COLLAB_PROJECTORS: dict[str, Callable[[CollabProjectorConfig, int, int], nn.Module]] = {
    "mlp": lambda cfg, i, o: _mlp(i, cfg.hidden, o, cfg.activation),
    "linear": lambda cfg, i, o: nn.Linear(i, o),
    "mlp_residual": lambda cfg, i, o: ResidualMLP(i, cfg.hidden, o, cfg.activation),
    "moe": lambda cfg, i, o: GatedExperts(i, cfg.hidden, o, cfg.num_experts, cfg.activation),
}

SEMANTIC_PROJECTORS: dict[str, Callable[[SemanticProjectorConfig, int], nn.Module]] = {
    "linear": lambda cfg, d: nn.Linear(d, d),
    "lowrank": lambda cfg, d: nn.Sequential(nn.Linear(d, cfg.rank, bias=False), nn.Linear(cfg.rank, d)),
    "mlp": lambda cfg, d: _mlp(d, cfg.hidden, d),
}


def _lookup(registry: dict[str, Callable[..., nn.Module]], key: str, name: str) -> Callable[..., nn.Module]:
    if name not in registry:
        raise ConfigError(f"{key}={name!r} is not one of {', '.join(registry)}")
    return registry[name]


def build_collab_projector(cfg: CollabProjectorConfig, in_dim: int, out_dim: int) -> nn.Module:
    """The collaborative projector P_c, maps (..., in_dim) MF vectors to (..., out_dim) LLM input embeddings.

    Args:
        cfg: projector type and sizes.
        in_dim: MF embedding width (stage2.emb_dim).
        out_dim: LLM hidden size, read from the backbone.

    Raises:
        ConfigError: ``cfg.type`` is not in ``COLLAB_PROJECTORS``.
    """
    return _lookup(COLLAB_PROJECTORS, "stage3.collab_projector.type", cfg.type)(cfg, in_dim, out_dim)


def build_semantic_projector(cfg: SemanticProjectorConfig, dim: int) -> nn.Module:
    """The semantic projector P_s, maps (..., dim) LLM item vectors to (..., dim) LLM input embeddings.

    Raises:
        ConfigError: ``cfg.type`` is not in ``SEMANTIC_PROJECTORS``.
    """
    return _lookup(SEMANTIC_PROJECTORS, "stage3.semantic_projector.type", cfg.type)(cfg, dim)


def _check_stage2_shape(cfg: CollabProjectorConfig, target: nn.Sequential, stage2_proj: nn.Sequential) -> None:
    """ConfigError unless ``stage2_proj`` and ``target`` are both in -> hidden -> out MLPs of the same sizes."""
    src_in, src_out = stage2_proj[0], stage2_proj[2]
    dst_in, dst_out = target[0], target[2]
    if src_in.out_features != dst_in.out_features:
        raise ConfigError(
            f"stage3.collab_projector.hidden={cfg.hidden} differs from stage2.proj_hidden={src_in.out_features}, "
            "so stage 2's projection cannot be copied; set them equal or use stage3.projector_init=random")
    if (src_in.in_features, src_out.out_features) != (dst_in.in_features, dst_out.out_features):
        raise ConfigError(
            f"stage 2's projection maps {src_in.in_features} -> {src_out.out_features} but the collab projector maps "
            f"{dst_in.in_features} -> {dst_out.out_features}; check stage2.emb_dim and the backbone's hidden size")


@torch.no_grad()
def warmup_init(projector: nn.Module, cfg: CollabProjectorConfig, stage2_proj: nn.Sequential, *, seed: int) -> None:
    """Copy stage 2's trained MF -> LLM projection into the collaborative projector, in place ("warm-up" init).

    mlp: both Linears copied exactly. mlp_residual: copied into ``.mlp``; the skip stays zero, so the output is
    exactly ``stage2_proj(x)``. moe: every expert gets a copy plus N(0, 0.02) noise on every weight and bias (drawn
    from a CPU generator seeded with ``seed``, so the init is reproducible and independent of the global RNG) and
    the gate is zeroed so that the initial mixture is uniform.

    Args:
        projector: built by ``build_collab_projector(cfg, ...)``.
        cfg: the config it was built from.
        stage2_proj: stage 2's ``AlignedMF.proj``, Linear(in, hidden) -> GELU -> Linear(hidden, out).
        seed: seed of the moe noise (unused otherwise).

    Raises:
        ConfigError: ``cfg.type`` is 'linear', or the sizes differ from stage 2's projection.
    """
    if cfg.type == "linear":
        raise ConfigError("stage3.projector_init='warmup' needs a collab projector with stage 2's shape "
                          "(mlp, mlp_residual or moe); use stage3.projector_init=random with collab_projector.type=linear")
    targets = {"mlp": lambda: [projector], "mlp_residual": lambda: [projector.mlp],
               "moe": lambda: list(projector.experts)}[cfg.type]()
    for target in targets:
        _check_stage2_shape(cfg, target, stage2_proj)
        target.load_state_dict(stage2_proj.state_dict())
    if cfg.type == "moe":
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for target in targets:
            for param in target.parameters():
                noise = torch.randn(param.shape, generator=gen, dtype=torch.float32) * MOE_NOISE_STD
                param.add_(noise.to(device=param.device, dtype=param.dtype))
        # Zero logits -> softmax = 1/K for every input: the mixture starts as the mean of the noisy copies.
        nn.init.zeros_(projector.gate.weight)
        nn.init.zeros_(projector.gate.bias)
