"""SeLLa-Rec's ID-token injection (METHOD.md §5.3): the hybrid projection layer writes collaborative and semantic
vectors into the input embeddings at ``<User_ID>``, ``<Item_ID>`` and ``<Warm_ID>``.

``<User_ID>`` = P_c(user_emb[u]), ``<Item_ID>`` = P_c(item_emb[i]) (one shared collaborative projector),
``<Warm_ID>`` = P_s(item_sem[i]). The sequence is built out of place (``torch.where``), never by writing into the
embedding output (METHOD.md gap #17).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["IdTokenInjector"]


class IdTokenInjector(nn.Module):
    """The trainable part of stage 3: MF tables, semantic table and the two projectors.

    Args:
        user_emb: (num_users, d_mf) MF user table (copied).
        item_emb: (num_items, d_mf) MF item table (copied).
        item_sem: (num_items, d_llm) semantic item table (copied), or None when the warm token is unused.
        collab: the collaborative projector P_c, or None when neither user nor item token is used.
        semantic: the semantic projector P_s, or None when the warm token is unused.
        tokens: which tokens the prompts carry, a subset of ("user", "item", "warm").
        token_ids: token name -> vocabulary id, e.g. {"user": 49152, ...}.
    """

    def __init__(self, *, user_emb: Tensor, item_emb: Tensor, item_sem: Tensor | None, collab: nn.Module | None,
                 semantic: nn.Module | None, tokens: Sequence[str], token_ids: dict[str, int]) -> None:
        super().__init__()
        self.tokens = tuple(tokens)
        self.token_ids = {name: token_ids[name] for name in self.tokens}
        self.user_emb = nn.Embedding.from_pretrained(user_emb.detach().clone().float(), freeze=False)
        self.item_emb = nn.Embedding.from_pretrained(item_emb.detach().clone().float(), freeze=False)
        self.item_sem = (nn.Embedding.from_pretrained(item_sem.detach().clone().float(), freeze=False)
                         if item_sem is not None else None)
        self.collab = collab
        self.semantic = semantic

    def token_vectors(self, users: Tensor, items: Tensor) -> dict[str, Tensor]:
        """The injected vector of each used token: name -> (B, d_llm)."""
        vectors = {}
        if "user" in self.tokens:
            vectors["user"] = self.collab(self.user_emb(users))
        if "item" in self.tokens:
            vectors["item"] = self.collab(self.item_emb(items))
        if "warm" in self.tokens:
            vectors["warm"] = self.semantic(self.item_sem(items))
        return vectors

    def token_mask(self, input_ids: Tensor) -> Tensor:
        """(B, T) True at every injected position."""
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for token_id in self.token_ids.values():
            mask |= input_ids == token_id
        return mask

    def forward(self, input_ids: Tensor, users: Tensor, items: Tensor, token_embedding: nn.Module) -> Tensor:
        """Input embeddings (B, T, d_llm) with every ID-token position replaced by its projected vector.

        Raises:
            AssertionError: a prompt does not carry each used token exactly once (a prompt-building bug).
        """
        embeds = token_embedding(input_ids)  # (B, T, D)
        for name, vector in self.token_vectors(users, items).items():
            mask = input_ids == self.token_ids[name]  # (B, T)
            assert bool((mask.sum(dim=1) == 1).all()), f"each prompt must carry {name} exactly once"
            embeds = torch.where(mask.unsqueeze(-1), vector.to(embeds.dtype).unsqueeze(1), embeds)
        return embeds
