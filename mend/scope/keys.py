"""Scope keys of corrections: where each correction's scope is anchored."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mend.models.editable import EditableModel
from mend.scope.model import ScopeModel
from mend.scope.states import block_states, subject_position
from mend.scope.subjects import subject_tokens


@torch.no_grad()
def correction_keys(
    scope: ScopeModel, model: EditableModel, prompts: Sequence[str], subjects: Sequence[str | None] | None = None
) -> Tensor:
    """One key per prompt ``(n, dim)``: the embedded state at its subject's last token."""
    return correction_scope_keys(scope, model, prompts, subjects)[0]


@torch.no_grad()
def correction_scope_keys(
    scope: ScopeModel, model: EditableModel, prompts: Sequence[str], subjects: Sequence[str | None] | None = None
) -> tuple[Tensor, Tensor]:
    """Per prompt its key (:func:`correction_keys`) and its relation key: the relation
    embedding of the state at its last token (width 0 when ``scope`` has none). One pass."""
    subjects = list(subjects) if subjects is not None else [None] * len(prompts)
    if len(subjects) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(subjects)} subjects")
    states = block_states(model, prompts, scope.config.layer)
    if not states:
        return torch.zeros(0, scope.config.dim), scope.embed_relation(torch.zeros(0, scope.d_model))
    rows = [s.states[subject_position(p, s.offsets, subj)] for p, s, subj in zip(prompts, states, subjects, strict=True)]
    return scope.embed(torch.stack(rows)), scope.embed_relation(torch.stack([s.states[-1] for s in states]))


def correction_subjects(model: EditableModel, subjects: Sequence[str | None]) -> Tensor:
    """The spellings of each correction's subject as token ids (:mod:`mend.scope.subjects`)."""
    return subject_tokens(model.tokenizer, list(subjects))
