"""One meta-training step: edit, then score the edited model on rephrases and locality.

This is the single definition of the step; the single-process trainer and the DeepSpeed
entry point both call it.

Memory schedule. The language model's graph and the editor's graph never coexist over
the whole batch: the edit's factors are captured (and their graphs freed) chunk by
chunk; the editor turns them into low-rank changes with its graph kept; the changes are
hooked in as *detached* leaves, and each chunk of rephrase/locality inputs is scored and
backpropagated into those leaves alone, its language-model graph freed at once. The
returned loss is a surrogate, ``sum <factor, dL/dfactor>``, whose backward carries the
accumulated gradient through the editor (and a least-squares solve, if configured):
exactly the gradient of the real loss, whatever the chunk size. So the number of edits
per step is bounded by the editor's rows, not by the language model's activations.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass

import torch
from torch import Tensor

from mend.capture import Factors, capture_factors
from mend.deltas import DeltaHooks, LowRankDelta
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
    loss: Tensor  # backward() of this gives the editor's gradient (see module docstring)
    metrics: dict[str, float]


def _merge_factors(chunks: list[tuple[int, dict[str, Factors]]]) -> dict[str, Factors]:
    """Concatenate per-chunk factors, renumbering examples by each chunk's offset."""
    merged: dict[str, list[Factors]] = {}
    for offset, factors in chunks:
        for name, f in factors.items():
            merged.setdefault(name, []).append(Factors(f.u, f.delta, f.example + offset))
    return {
        name: Factors(torch.cat([p.u for p in parts]), torch.cat([p.delta for p in parts]),
                      torch.cat([p.example for p in parts]))
        for name, parts in merged.items()
    }


class MetaStep:
    """Computes the meta-training loss of one :class:`StepBatch`.

    Inputs scored before and after the edit share everything below the first edited
    block; that part runs once (no grad) and is replayed in the post-edit pass.
    ``chunk_size`` bounds how many examples go through the language model at once.
    """

    def __init__(
        self, model: EditableModel, editor: Editor, c_edit: float, c_loc: float, chunk_size: int | None = None
    ):
        self.model = model
        self.editor = editor
        self.c_edit = c_edit
        self.c_loc = c_loc
        self.chunk_size = chunk_size
        self.prefix = BlockPrefix(model.model, editor.targets)

    def _pre_pass(self, batch: TokenBatch, need_logits: bool) -> tuple[Tensor | None, object]:
        """Unedited logits of ``batch`` (if needed) and the recorded prefix output."""
        hf = self.model.model
        with torch.no_grad():
            if not need_logits and self.prefix.enabled:
                return None, self.prefix.run(lambda: self.model.task.logits(hf, batch))
            with self.prefix.record() as recorded:
                logits = self.model.task.logits(hf, batch)
        return logits, (recorded[0] if recorded else None)

    def _post_logits(self, batch: TokenBatch, recorded) -> Tensor:
        replay = self.prefix.replay(recorded) if recorded is not None else contextlib.nullcontext()
        with replay:
            return self.model.task.logits(self.model.model, batch)

    def __call__(self, batch: StepBatch, update_stats: bool) -> StepOutput:
        """Loss and metrics of one batch; ``update_stats`` folds the edit's factors into
        the editor's normalisation statistics (training only)."""
        task, hf = self.model.task, self.model.model
        size = self.chunk_size
        # Unedited predictions on the equivalence inputs are only a metric: skip in training.
        want_pre_equiv = not (self.prefix.enabled and self.editor.training)
        equiv = [(c, *self._pre_pass(c, want_pre_equiv)) for c in batch.equiv.chunks(size)]
        loc = [(c, *self._pre_pass(c, True)) for c in batch.loc.chunks(size)]

        captured, offset = [], 0
        for chunk in batch.edit.chunks(size):
            captured.append((offset, capture_factors(hf, task, self.editor.targets, chunk,
                                                     self.editor.config.token_mode).factors))
            offset += chunk.size
        factors = _merge_factors(captured)
        deltas = self.editor.deltas_from(factors, update_stats=update_stats)
        train = torch.is_grad_enabled()
        leaves = {
            name: LowRankDelta(d.u.detach().requires_grad_(train), d.v.detach().requires_grad_(train), d.example)
            for name, d in deltas.items()
        }

        n_equiv = batch.equiv.size
        n_loc_positions = max(int((batch.loc.scored_labels != -100).sum()), 1)
        sums = dict.fromkeys(["nll", "kl", "acc", "em", "acc_pre", "loc_agree"], 0.0)
        key = uuid.uuid4().hex
        hooks = DeltaHooks.of(hf)
        hooks.add(key, leaves)
        try:
            for chunk, pre_logits, recorded in equiv:
                post = self._post_logits(chunk, recorded)
                nll = per_example_nll(post, chunk.scored_labels)
                if train:
                    (self.c_edit * nll.sum() / n_equiv).backward()
                acc, em = token_hits(post, chunk.scored_labels)
                sums["nll"] += nll.sum().item()
                sums["acc"] += acc.sum().item()
                sums["em"] += em.float().sum().item()
                if pre_logits is not None:
                    sums["acc_pre"] += token_hits(pre_logits, chunk.scored_labels)[0].sum().item()
            for chunk, pre_logits, recorded in loc:
                post = self._post_logits(chunk, recorded)
                kl = kl_on_scored(pre_logits, post, chunk.scored_labels, reduction="sum")
                if train:
                    (self.c_loc * kl / n_loc_positions).backward()
                sums["kl"] += kl.item()
                sums["loc_agree"] += argmax_agreement(pre_logits, post, chunk.scored_labels).sum().item()
        finally:
            hooks.remove(key)

        loss_edit = sums["nll"] / n_equiv
        loss_loc = sums["kl"] / n_loc_positions
        loss_value = self.c_edit * loss_edit + self.c_loc * loss_loc
        if train:
            surrogate = sum(
                (d.u * leaf.u.grad).sum() + (d.v * leaf.v.grad).sum()
                for d, leaf in ((deltas[n], leaves[n]) for n in deltas)
                if leaf.u.grad is not None
            )
        else:
            surrogate = torch.tensor(loss_value)
        metrics = {
            "loss": loss_value,
            "loss_edit": loss_edit,
            "loss_loc": loss_loc,
            "edit_acc": sums["acc"] / n_equiv,
            "edit_em": sums["em"] / n_equiv,
            "loc_agree": sums["loc_agree"] / batch.loc.size,
            "edit_rows": float(sum(f.rows for f in factors.values())),
        }
        if want_pre_equiv:
            metrics["edit_acc_pre"] = sums["acc_pre"] / n_equiv
        return StepOutput(surrogate, metrics)
