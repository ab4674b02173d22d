"""Scores of requests against scope keys: the best cosine over a request's tokens.

Shared by training and measuring scope models (:mod:`mend.scope.fit`) and by telling
which corrections ask the same question (:mod:`mend.scope.supersede`); routing in the
forward pass (:mod:`mend.scope.routing`) computes the same score on the live states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mend.scope.model import ScopeModel
from mend.scope.states import TextStates


@dataclass
class Padded:
    """Token states of several texts, padded: ``states`` (N, T, d), ``usable`` (N, T),
    and each text's tokens (``ids``, for the subject test)."""

    states: Tensor
    usable: Tensor
    ids: list[list[int]]

    @staticmethod
    def of(texts: Sequence[TextStates], skip_first: int, max_tokens: int = 64) -> Padded:
        width = max(1, min(max_tokens, max((len(t.states) for t in texts), default=1)))
        d = texts[0].states.shape[1] if texts else 1
        states = torch.zeros(len(texts), width, d)
        usable = torch.zeros(len(texts), width, dtype=torch.bool)
        for i, text in enumerate(texts):
            rows = text.states[:width]
            states[i, : len(rows)] = rows
            usable[i, skip_first : len(rows)] = True
            if not usable[i].any():  # a text shorter than the skipped positions: its last token
                usable[i, len(rows) - 1] = True
        return Padded(states, usable, [list(t.ids) for t in texts])

    def __len__(self) -> int:
        return self.states.shape[0]

    def last(self) -> Tensor:
        """``(n, d_model)``: each text's state at its last usable token (its last token)."""
        return self.states[torch.arange(len(self)), last_positions(self.usable)]

    def take(self, index: Tensor) -> Padded:
        return Padded(self.states[index], self.usable[index], [self.ids[i] for i in index.tolist()])

    @staticmethod
    def cat(sets: Sequence[Padded]) -> Padded:
        """All texts of ``sets``, padded to the widest."""
        width = max(p.states.shape[1] for p in sets)
        states, usable = [], []
        for p in sets:
            extra = width - p.states.shape[1]
            states.append(nn.functional.pad(p.states, (0, 0, 0, extra)))
            usable.append(nn.functional.pad(p.usable, (0, extra)))
        return Padded(torch.cat(states), torch.cat(usable), [ids for p in sets for ids in p.ids])



def best_token_scores(scope: ScopeModel, keys: Tensor, queries: Padded, chunk: int = 256) -> Tensor:
    """``(queries, keys)``: for every query and key, the best cosine over the query's
    usable tokens (``keys`` already embedded)."""
    out = []
    for start in range(0, len(queries), chunk):
        part = queries.take(torch.arange(start, min(start + chunk, len(queries))))
        emb = scope.embed(part.states)  # (q, T, dim)
        sims = torch.einsum("qtd,kd->qtk", emb, keys)
        out.append(sims.masked_fill(~part.usable.unsqueeze(-1), -2.0).amax(1))
    return torch.cat(out) if out else torch.zeros(0, len(keys))


def last_positions(mask: Tensor) -> Tensor:
    """``(B,)``: per row of ``mask`` (B, T) the index of its last set position (0 if none)."""
    width = mask.shape[1]
    return (width - 1 - mask.flip(1).long().argmax(1)).masked_fill(~mask.any(1), 0)
