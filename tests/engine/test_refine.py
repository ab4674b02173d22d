"""Corrections that land at no strength get their values fitted (mend.scope.landing)."""

from __future__ import annotations

import pytest
import torch

from mend.edit import Edit
from mend.evaluation.scoring import score_targets
from mend.scope.landing import refine_values
from tests.support.scoped import PROMPTS, TARGETS, three_request_edit
from tests.support.tiny_models import tiny_model


def _edit(model, aggregation="scoped"):
    return three_request_edit(model, 1e-3, aggregation)


def _exact(model, edit, which):
    with edit.applied(model):
        return score_targets(model, [PROMPTS[i] for i in which], [TARGETS[i] for i in which]).exact


def test_refined_requests_land_judged_with_the_others_and_keep_their_keys(monkeypatch):
    model = tiny_model("llama")
    edit = _edit(model)
    assert not any(_exact(model, edit, [1, 2]))  # a random model: the small edit lands nowhere
    others, batch = edit.select([0]), edit.select([1, 2])  # "a" as if active, "b" and "c" new
    shown, applied = [], Edit.applied

    def recording(self, model=None):
        shown.append([r.request_id for r in self.requests])
        return applied(self, model)

    monkeypatch.setattr(Edit, "applied", recording)
    refined = refine_values(batch, [0, 1], steps=60, step=0.3, others=others)
    monkeypatch.undo()
    assert refined.requests == [0, 1] and refined.landed == [0, 1]
    assert refined.steps[0] == refined.steps[1] > 0  # fitted together, judged once all land
    assert shown == [["a", "b", "c"]] * (refined.steps[0] + 1)  # every step judged as published
    assert all(_exact(model, refined.edit.with_others(others), [1, 2]))
    assert [r.request_id for r in refined.edit.requests] == ["b", "c"]
    for name, delta in refined.edit.deltas.items():
        before = batch.deltas[name]
        assert torch.equal(delta.u, before.u) and torch.equal(delta.example, before.example)
        assert not delta.v.requires_grad
        assert not torch.equal(delta.v, before.v)
    # The base model is frozen: refining's backward passes reach the values alone, not
    # (through every block) the model's own weights.
    assert all(p.grad is None and not p.requires_grad for p in model.model.parameters())


def test_without_steps_the_edit_is_judged_but_unchanged():
    model = tiny_model("llama")
    edit = _edit(model)
    refined = refine_values(edit, [1], steps=0)
    assert refined.steps == [-1] and refined.landed == []
    assert refined.edit is edit


def test_only_routed_edits_are_refined():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="only routed"):
        refine_values(_edit(model, aggregation="sum"), [0])


def test_a_request_counts_as_landed_only_once_the_pairs_kept_alongside_hold_too():
    model = tiny_model("llama")
    edit = _edit(model)
    kept = ("Water boils at", " Paris")  # switches on nothing: refining cannot make it hold
    with edit.applied(model):
        assert not score_targets(model, [kept[0]], [kept[1]]).exact[0]
    alone = refine_values(edit, [1], steps=60, step=0.3)
    assert alone.landed == [1]
    refined = refine_values(edit, [1], steps=5, step=0.3, keep=[kept])
    assert refined.steps == [-1] and refined.landed == []
