"""The base model's hidden states after one decoder block, and the scope keys of
corrections made of them: where each correction's scope is anchored.

Only the blocks up to the routing layer run (the forward stops there), and those blocks
are never edited, so the states are the base model's whatever corrections are applied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mend.models.blocks import block_output, decoder_blocks
from mend.models.editable import EditableModel
from mend.scope.model import ScopeModel
from mend.scope.subjects import subject_tokens


class StopForward(Exception):
    """Raised by a hook on the routing block when nothing above it needs to run (the
    caller suppresses it around the forward pass)."""


@dataclass
class TextStates:
    """Hidden states of one text after the routing block, one row per token."""

    states: Tensor  # (T, d_model)
    offsets: list[tuple[int, int]]  # character span of each token
    ids: list[int]  # the tokens


@torch.no_grad()
def block_states(model: EditableModel, texts: Sequence[str], layer: int, batch_size: int = 32) -> list[TextStates]:
    """Per text, the states after decoder block ``layer`` (0-based) for every token."""
    return layer_states(model, texts, [layer], batch_size)[layer]


@torch.no_grad()
def layer_states(
    model: EditableModel, texts: Sequence[str], layers: Sequence[int], batch_size: int = 32
) -> dict[int, list[TextStates]]:
    """:func:`block_states` for several blocks from one forward pass (up to the highest)."""
    blocks = decoder_blocks(model.model)
    tok = model.tokenizer
    captured: dict[int, Tensor] = {}
    top = max(layers)

    def keep(layer: int):
        def hook(module, args, output):
            captured[layer] = block_output(output).detach()
            if layer == top:
                raise StopForward

        return hook

    handles = [blocks[layer].register_forward_hook(keep(layer)) for layer in sorted(set(layers))]
    out: dict[int, list[TextStates]] = {layer: [] for layer in layers}
    try:
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            enc = tok(chunk, return_tensors="pt", padding=True, return_offsets_mapping=True)
            offsets = enc.pop("offset_mapping")
            mask = enc["attention_mask"].bool()
            ids = enc["input_ids"].clone()
            captured.clear()
            with contextlib.suppress(StopForward):
                model.model(**enc.to(model.device), use_cache=False)
            for layer in out:
                states = captured[layer].float().cpu()
                for i in range(len(chunk)):
                    real = mask[i]
                    out[layer].append(TextStates(states[i][real], [tuple(o) for o in offsets[i][real].tolist()],
                                                 ids[i][real].tolist()))
    finally:
        for handle in handles:
            handle.remove()
    return out


def subject_position(text: str, offsets: Sequence[tuple[int, int]], subject: str | None) -> int:
    """The token at which ``subject`` ends in ``text`` (its last occurrence, case-insensitive),
    where MEMIT reads its keys; the last token when there is no subject or it is absent."""
    last = len(offsets) - 1
    if not subject:
        return last
    end = text.lower().rfind(subject.lower())
    if end < 0:
        return last
    end += len(subject)
    inside = [i for i, (s, e) in enumerate(offsets) if e > s and s < end]
    return inside[-1] if inside else last


def subject_states(prompts: Sequence[str], states: Sequence[TextStates], subjects: Sequence[str | None]) -> Tensor:
    """``(n, d_model)``: each prompt's state at its subject's last token
    (:func:`subject_position`), where scope keys are read."""
    return torch.stack([s.states[subject_position(p, s.offsets, subj)]
                        for p, s, subj in zip(prompts, states, subjects, strict=True)])


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
    return (scope.embed(subject_states(prompts, states, subjects)),
            scope.embed_relation(torch.stack([s.states[-1] for s in states])))


def correction_subjects(model: EditableModel, subjects: Sequence[str | None]) -> Tensor:
    """The spellings of each correction's subject as token ids (:mod:`mend.scope.subjects`)."""
    return subject_tokens(model.tokenizer, list(subjects))
