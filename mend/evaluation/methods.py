"""Editing methods compared under one evaluation: MEND and the fine-tuning baselines."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch

from mend.data.records import EditRecord, LocalityProbe
from mend.data.text import normalise
from mend.editor.editor import Editor
from mend.models.editable import EditableModel
from mend.models.tasks import per_example_nll
from mend.models.unedited_blocks import reusing_unedited_blocks
from mend.scope.landing import DEFAULT_REFINE_STEPS, DEFAULT_STRENGTHS, written
from mend.scope.supersede import Questions, superseded_within
from mend.training.losses import kl_on_scored


class Applied(Protocol):
    """An edit currently in effect on a model; ``remove()`` undoes it."""

    def remove(self) -> object: ...


class EditMethod(Protocol):
    name: str

    def apply(self, model: EditableModel, records: Sequence[EditRecord]) -> Applied:
        """Edit ``model`` so that every record's prompt yields its target (simultaneously)."""
        ...


@dataclass
class Superseding:
    """An edit of the live requests of a group, and which requests newer ones of the
    same question superseded (record id -> the superseding record's id): those are not
    live, so the runner scores them apart (:mod:`mend.scope.supersede`)."""

    edit: Applied
    superseded: dict[str, str]

    def remove(self) -> object:
        return self.edit.remove()


@dataclass
class MendMethod:
    """A meta-trained (or identity) MEND editor; ``passes`` and ``aggregation`` (None: the
    editor's own) as in :meth:`Editor.edit`. Records' subjects anchor scoped edits; a
    scoped group keeps the newest correction of each question and writes each at the
    strongest of ``strengths`` that still lands, refining those landing at none for at most
    ``refine_steps`` (as the queue does; :func:`mend.scope.landing.written`)."""

    editor: Editor
    name: str = "mend"
    passes: int = 1
    aggregation: str | None = None
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    refine_steps: int = DEFAULT_REFINE_STEPS

    def apply(self, model, records):
        superseded: dict[str, str] = {}
        scope = self.editor.scope_for(self.aggregation)
        # Every state this reads again comes back from the forwards that ran first (with
        # routing's block kept: mend.models.unedited_blocks): the scope keys and the
        # questions read the prompts' states at the scope block off the capture pass's
        # prompt + target sequences, and the strength search runs only the edited blocks.
        # Without a scope nothing runs twice here, so nothing is kept.
        reuse = reusing_unedited_blocks(model, keep=(scope.config.layer,)) if scope is not None else nullcontext()
        with reuse:
            edit = self.editor.edit(
                model, [r.prompt for r in records], [r.target for r in records],
                [r.record_id for r in records], passes=self.passes, aggregation=self.aggregation,
                subjects=[r.subject for r in records],
            )
            if scope is not None:
                # A batched edit is the concatenation of single edits: dropping the
                # superseded requests' rows afterwards is the edit of the live ones alone.
                questions = Questions.of(scope, model, [r.prompt for r in records], [r.subject for r in records])
                # Another correction of the same question with the same answer agrees: both stay.
                newer = superseded_within(scope, questions, [normalise(r.target) for r in records])
                superseded = {r.record_id: records[n].record_id
                              for r, n in zip(records, newer, strict=True) if n is not None}
                edit = edit.select([i for i, n in enumerate(newer) if n is None])
                edit, _ = written(edit, self.strengths, self.refine_steps)
        edit.apply()
        return Superseding(edit, superseded) if superseded else edit


class WeightSnapshot:
    """The edited matrices' values before a fine-tuning edit; ``remove()`` restores them."""

    def __init__(self, model: EditableModel):
        self.model = model
        self.saved = {
            t.module_name: model.model.get_submodule(t.module_name).weight.detach().clone()
            for t in model.targets
        }

    @torch.no_grad()
    def remove(self) -> None:
        for name, value in self.saved.items():
            self.model.model.get_submodule(name).weight.copy_(value)


@contextmanager
def trainable_targets(model: EditableModel) -> Iterator[list[torch.nn.Parameter]]:
    """The edited matrices' weights with gradients on, for a fine-tuning loop; on exit
    their ``requires_grad`` flags are restored and their gradients dropped (the rest of
    the model stays frozen, so only these are optimised)."""
    weights = [model.model.get_submodule(t.module_name).weight for t in model.targets]
    flags = [w.requires_grad for w in weights]
    for w in weights:
        w.requires_grad_(True)
    try:
        yield weights
    finally:
        for w, flag in zip(weights, flags, strict=True):
            w.requires_grad_(flag)
            w.grad = None


@dataclass
class FineTuneMethod:
    """Fine-tuning of the same matrices the editor edits (FT), optionally with a KL
    locality constraint on unrelated probes (FT+L, the paper's FT+KL baseline).

    Stops early once every target token is the argmax under teacher forcing.
    """

    lr: float = 5e-4
    max_steps: int = 40
    c_loc: float = 0.0
    locality_pool: Sequence[LocalityProbe] = ()
    n_loc: int = 4
    seed: int = 0
    name: str = "ft"

    def apply(self, model, records):
        snapshot = WeightSnapshot(model)
        batch = model.task.batch([r.prompt for r in records], [r.target for r in records]).to(model.device)
        loc_batch = pre_loc = None
        if self.c_loc > 0:
            if not self.locality_pool:
                raise ValueError("FT+L needs a pool of locality probes")
            gen = torch.Generator().manual_seed(self.seed + len(records))
            pick = torch.randperm(len(self.locality_pool), generator=gen)[: self.n_loc].tolist()
            probes = [self.locality_pool[i] for i in pick]
            loc_batch = model.task.batch([p.prompt for p in probes], [p.answer for p in probes]).to(model.device)
            with torch.no_grad():
                pre_loc = model.task.logits(model.model, loc_batch)
        with trainable_targets(model) as weights:
            optimizer = torch.optim.Adam(weights, lr=self.lr)
            for _ in range(self.max_steps):
                logits = model.task.logits(model.model, batch)
                labels = batch.scored_labels
                mask = labels != -100
                if bool(((logits.argmax(-1) == labels) | ~mask).all()):
                    break
                loss = per_example_nll(logits, labels).mean()
                if loc_batch is not None:
                    post = model.task.logits(model.model, loc_batch)
                    loss = loss + self.c_loc * kl_on_scored(pre_loc, post, loc_batch.scored_labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return snapshot
