"""Matrix factorisation with an MF -> LLM alignment head, and its alignment losses (METHOD.md §4.1-§4.2).

The collaborative model of SeLLa-Rec stage 2b: user/item ID embeddings scored by a dot product, plus the semantic
item table distilled from the LLM (stage 2a) and a projection of MF item vectors into that space, pulled together
by a contrastive loss (RINCE as in the official code, or plain InfoNCE as the paper's text describes it).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AlignedMF", "rince_loss", "infonce_loss", "alignment_loss"]

AlignKind = Literal["rince", "infonce", "none"]


class AlignedMF(nn.Module):
    """MF scorer ``<user_emb[u], item_emb[i]>`` with a projection ``proj`` of item vectors into the LLM space.

    Args:
        num_users: user rows including padding id 0.
        num_items: item rows including padding id 0.
        emb_dim: MF embedding width (paper: 256).
        semantic: (num_items, D_llm) float table that initialises ``item_sem`` (copied, never modified in place).
            None builds a plain MF: no ``item_sem`` and no ``proj`` (both attributes are None), so the baseline
            carries no LLM-width parameters at all.
        proj_hidden: hidden width of ``proj`` (paper: 1024).
        train_semantic: ``item_sem`` is trained (official code) rather than frozen.
    """

    def __init__(self, num_users: int, num_items: int, emb_dim: int, *, semantic: Tensor | None = None,
                 proj_hidden: int = 1024, train_semantic: bool = True) -> None:
        super().__init__()
        # nn.Embedding's default N(0, 1) init, as the official MF (METHOD.md §4.1).
        self.user_emb = nn.Embedding(num_users, emb_dim, padding_idx=0)
        self.item_emb = nn.Embedding(num_items, emb_dim, padding_idx=0)
        self.item_sem: nn.Embedding | None = None
        self.proj: nn.Sequential | None = None
        if semantic is not None:
            if semantic.dim() != 2 or semantic.shape[0] != num_items:
                raise ValueError(f"semantic table has shape {tuple(semantic.shape)}, expected ({num_items}, D_llm)")
            d_llm = semantic.shape[1]
            # from_pretrained would share the caller's storage; clone so training never edits the input.
            self.item_sem = nn.Embedding.from_pretrained(semantic.detach().float().clone(),
                                                         freeze=not train_semantic, padding_idx=0)
            self.proj = nn.Sequential(nn.Linear(emb_dim, proj_hidden), nn.GELU(approximate="none"),
                                      nn.Linear(proj_hidden, d_llm))

    @property
    def aligned(self) -> bool:
        """Whether the model has the semantic table and projection head."""
        return self.item_sem is not None

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Logits ``<user_emb[u], item_emb[i]>`` (no bias, no sigmoid). users, items: (B,) -> (B,)."""
        return (self.user_emb(users) * self.item_emb(items)).sum(-1)  # (B,)

    def project_items(self, items: Tensor) -> Tensor:
        """``proj(item_emb[i])``: MF item vectors in the LLM space. items: (B,) -> (B, D_llm)."""
        if self.proj is None:
            raise RuntimeError("this AlignedMF was built without a semantic table, so it has no projection")
        return self.proj(self.item_emb(items))  # (B, D_llm)

    @torch.no_grad()
    def alignment_cosine(self, items: Tensor) -> float:
        """Mean cosine between ``proj(item_emb[i])`` and ``item_sem[i]`` over ``items`` (B,)."""
        assert self.item_sem is not None
        return float(F.cosine_similarity(self.project_items(items), self.item_sem(items), dim=-1).mean())


def _similarities(anchor: Tensor, candidates: Tensor, tau: float) -> Tensor:
    """s_kj = normalize(anchor_k) . normalize(candidates_j) / tau. (B, D), (B, D) -> (B, B)."""
    return F.normalize(anchor, dim=-1) @ F.normalize(candidates, dim=-1).T / tau  # (B, B)


def rince_loss(anchor: Tensor, candidates: Tensor, tau: float, q: float, lam: float,
               rows: Tensor | None = None) -> Tensor:
    """Robust InfoNCE of the official code (METHOD.md §4.2), positive counted twice, batch duplicates kept.

    With a_k = normalize(anchor_k), b_k = normalize(candidates_k), s_kj = a_k . b_j / tau:

        L = mean_k[ -exp(q s_kk) / q ] + mean_k[ (lam (exp(s_kk) + sum_j exp(s_kj)))^q / q ]

    where sum_j includes j = k. It is evaluated as mean_k[(expm1(q log(lam X_k)) - expm1(q s_kk)) / q] with
    log X_k a logsumexp: the same number, without overflow of exp(s) or cancellation of the two 1/q terms.

    Args:
        anchor: (B, D) LLM-side vectors (``item_sem`` rows).
        candidates: (B, D) projected MF vectors, row k the positive of anchor k.
        tau: temperature (paper code: 0.2).
        q: RINCE q (paper code: 0.01); q -> 0 gives log(lam) + InfoNCE with the doubled positive.
        lam: RINCE lambda (paper code: 0.1).
        rows: (B,) optional index into ``anchor``/``candidates`` (then (U, D) each): the batch is
            ``anchor[rows]``, ``candidates[rows]``. Same loss, but the similarities of repeated items are computed
            once.

    Returns:
        Scalar loss.
    """
    sim = _similarities(anchor, candidates, tau)  # (B, B), or (U, U) when rows is given
    if rows is not None:
        sim = sim[rows][:, rows]  # (B, B)
    pos = sim.diagonal()  # (B,)
    log_x = torch.logsumexp(torch.cat([pos[:, None], sim], dim=1), dim=1)  # (B,) log(e^{s_kk} + sum_j e^{s_kj})
    neg_term = torch.expm1(q * (log_x + math.log(lam)))  # (B,)
    return ((neg_term - torch.expm1(q * pos)) / q).mean()


def _first_occurrence(items: Tensor) -> Tensor:
    """Index of the first row of each distinct id in ``items`` (B,) -> (U,), ordered by id."""
    uniq, inverse = torch.unique(items, return_inverse=True)
    rows = torch.arange(len(items), device=items.device)
    first = torch.full((len(uniq),), len(items), dtype=rows.dtype, device=items.device)
    return first.scatter_reduce(0, inverse, rows, reduce="amin")  # (U,)


def infonce_loss(anchor: Tensor, candidates: Tensor, tau: float, items: Tensor | None = None) -> Tensor:
    """InfoNCE with the LLM vector as anchor over the batch's distinct items (the paper's L_align; METHOD.md §8 row 3).

        L = mean_k[ -s_kk + log sum_j exp(s_kj) ],  s_kj = normalize(anchor_k) . normalize(candidates_j) / tau

    with k, j over distinct items, so a repeated item is never its own negative.

    Args:
        anchor: (B, D) LLM-side vectors.
        candidates: (B, D) projected MF vectors, row k the positive of anchor k.
        tau: temperature.
        items: (B,) item ids of the rows; rows of a repeated id are kept once. None: rows are already distinct.

    Returns:
        Scalar loss.
    """
    if items is not None:
        keep = _first_occurrence(items)  # (U,)
        anchor, candidates = anchor[keep], candidates[keep]  # (U, D)
    sim = _similarities(anchor, candidates, tau)  # (U, U)
    return F.cross_entropy(sim, torch.arange(len(sim), device=sim.device))


def alignment_loss(kind: AlignKind, model: AlignedMF, items: Tensor, *, tau: float, q: float = 0.01,
                   lam: float = 0.1) -> Tensor:
    """Alignment loss ``kind`` between ``model.item_sem`` and ``model.project_items`` on a batch's items.

    Args:
        kind: 'rince' (official code: all B rows, duplicates as negatives), 'infonce' (distinct items only) or
            'none' (a zero scalar, so a plain MF can share the training loop).
        model: the MF with its alignment head (required unless kind is 'none').
        items: (B,) item ids of the batch's interactions, positives and negatives alike.
        tau: temperature.
        q: RINCE q (rince only).
        lam: RINCE lambda (rince only).

    Returns:
        Scalar loss.
    """
    if kind == "none":
        return torch.zeros((), device=items.device)
    if model.item_sem is None:
        raise RuntimeError(f"alignment '{kind}' needs an AlignedMF built with a semantic table")
    # The projection and similarities run once per distinct item (a 1024-row ML-100K batch holds ~550); RINCE
    # then expands them back to all B rows, so the loss and its gradients are those of the B-row formula.
    distinct, rows = torch.unique(items, return_inverse=True)  # (U,), (B,)
    anchor, candidates = model.item_sem(distinct), model.project_items(distinct)  # (U, D_llm) each
    if kind == "rince":
        return rince_loss(anchor, candidates, tau, q, lam, rows=rows)
    if kind == "infonce":
        return infonce_loss(anchor, candidates, tau)
    raise ValueError(f"alignment kind {kind!r} is not one of rince, infonce, none")
