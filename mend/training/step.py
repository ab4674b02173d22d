"""One meta-training step: edit, then score the edited model on rephrases and locality.

This function is the single definition of the step; the single-process trainer and the
DeepSpeed entry point both call it.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass

import torch
from torch import Tensor

from mend.capture import capture_factors
from mend.deltas import DeltaHooks
from mend.editor.editor import Editor
from mend.models.editable import EditableModel
from mend.models.tasks import TokenBatch, per_example_nll
from mend.prefix import BlockPrefix
from mend.training.losses import argmax_agreement, kl_on_scored, token_hits


@dataclass
class StepBatch:
    """The inputs of one step: what to edit, where the edit must show, where it must not."""

    edit: TokenBatch  # edit prompts -> new targets (the gradient is taken here)
    equiv: TokenBatch  # rephrases (and optionally the prompts) -> the same targets
    loc: TokenBatch  # unrelated prompts -> their answers (scored positions for the KL)

    def to(self, device) -> StepBatch:
        return StepBatch(self.edit.to(device), self.equiv.to(device), self.loc.to(device))


@dataclass
class StepOutput:
    loss: Tensor  # differentiable w.r.t. the editor
    metrics: dict[str, float]


class MetaStep:
    """Computes the meta-training loss of one :class:`StepBatch`.

    Inputs scored before and after the edit share everything below the first edited
    block; that part runs once (no grad) and is replayed in the post-edit pass.
    """

    def __init__(self, model: EditableModel, editor: Editor, c_edit: float, c_loc: float):
        self.model = model
        self.editor = editor
        self.c_edit = c_edit
        self.c_loc = c_loc
        self.prefix = BlockPrefix(model.model, editor.targets)

    def _pre_pass(self, batch: TokenBatch) -> tuple[Tensor, object]:
        """Unedited logits of ``batch`` and the recorded prefix output."""
        with torch.no_grad(), self.prefix.record() as recorded:
            logits = self.model.task.logits(self.model.model, batch)
        return logits, (recorded[0] if recorded else None)

    def _prefix_only(self, batch: TokenBatch) -> object:
        """The recorded prefix output of ``batch``, without running the rest."""
        if not self.prefix.enabled:
            return None
        with torch.no_grad():
            return self.prefix.run(lambda: self.model.task.logits(self.model.model, batch))

    def _post_logits(self, batch: TokenBatch, recorded) -> Tensor:
        replay = self.prefix.replay(recorded) if recorded is not None else contextlib.nullcontext()
        with replay:
            return self.model.task.logits(self.model.model, batch)

    def __call__(self, batch: StepBatch, update_stats: bool) -> StepOutput:
        """Loss and metrics of one batch; ``update_stats`` folds the edit's factors into
        the editor's normalisation statistics (training only)."""
        task, hf = self.model.task, self.model.model
        # Unedited predictions on the equivalence inputs are only needed as a metric.
        if self.prefix.enabled and self.editor.training:
            pre_equiv, equiv_prefix = None, self._prefix_only(batch.equiv)
        else:
            pre_equiv, equiv_prefix = self._pre_pass(batch.equiv)
        pre_loc, loc_prefix = self._pre_pass(batch.loc)

        capture = capture_factors(hf, task, self.editor.targets, batch.edit, self.editor.config.token_mode)
        deltas = self.editor.deltas_from(capture.factors, update_stats=update_stats)
        key = uuid.uuid4().hex
        hooks = DeltaHooks.of(hf)
        hooks.add(key, deltas)
        try:
            post_equiv = self._post_logits(batch.equiv, equiv_prefix)
            post_loc = self._post_logits(batch.loc, loc_prefix)
        finally:
            hooks.remove(key)

        equiv_labels, loc_labels = batch.equiv.scored_labels, batch.loc.scored_labels
        loss_edit = per_example_nll(post_equiv, equiv_labels).mean()
        loss_loc = kl_on_scored(pre_loc, post_loc, loc_labels)
        loss = self.c_edit * loss_edit + self.c_loc * loss_loc

        acc_post, em_post = token_hits(post_equiv, equiv_labels)
        metrics = {
            "loss": loss.item(),
            "loss_edit": loss_edit.item(),
            "loss_loc": loss_loc.item(),
            "edit_acc": acc_post.mean().item(),
            "edit_em": em_post.float().mean().item(),
            "loc_agree": argmax_agreement(pre_loc, post_loc, loc_labels).mean().item(),
            "edit_rows": float(sum(f.rows for f in capture.factors.values())),
        }
        if pre_equiv is not None:
            metrics["edit_acc_pre"] = token_hits(pre_equiv, equiv_labels)[0].mean().item()
        return StepOutput(loss, metrics)
