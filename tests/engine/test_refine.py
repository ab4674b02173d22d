"""Corrections that land at no strength get their values fitted (mend.scope.refine)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from mend.evaluation.scoring import score_targets
from mend.scope.refine import refine_values
from tests.support.scoped import PROMPTS, TARGETS, three_request_edit
from tests.support.tiny_models import tiny_model


def _edit(model, aggregation="scoped"):
    return three_request_edit(model, 1e-3, aggregation)


def _exact(model, edit, which):
    with edit.applied(model):
        return score_targets(model, [PROMPTS[i] for i in which], [TARGETS[i] for i in which]).exact


def test_refined_requests_land_and_keep_their_keys_while_the_others_are_untouched():
    model = tiny_model("llama")
    edit = _edit(model)
    assert not any(_exact(model, edit, [1, 2]))  # a random model: the small edit lands nowhere
    shown = []

    @contextlib.contextmanager
    def showing(trial):
        shown.append([r.request_id for r in trial.requests])
        with trial.applied(model):
            yield

    refined = refine_values(edit, [1, 2], steps=60, step=0.3, showing=showing)
    assert refined.requests == [1, 2] and refined.landed == [1, 2]
    assert refined.steps[0] == refined.steps[1] > 0  # fitted together, judged once all land
    assert shown == [["a", "b", "c"]] * (refined.steps[0] + 1)  # every step judged as published
    assert all(_exact(model, refined.edit, [1, 2]))
    assert [r.request_id for r in refined.edit.requests] == ["a", "b", "c"]
    for name, delta in refined.edit.deltas.items():
        before = edit.deltas[name]
        assert torch.equal(delta.u, before.u) and torch.equal(delta.example, before.example)
        assert not delta.v.requires_grad
        mine = before.example == 0
        assert torch.equal(delta.v[mine], before.v[mine])  # request a was not refined
        assert not torch.equal(delta.v[~mine], before.v[~mine])
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
