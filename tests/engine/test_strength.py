"""Each scoped correction at the strongest strength that still lands (mend.scope.landing)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from mend.edit import Edit
from mend.evaluation.scoring import TargetScores
from mend.scope import landing
from mend.scope.landing import strongest_landing
from tests.support.scoped import PROMPTS, TARGETS, three_request_edit
from tests.support.tiny_models import tiny_model


def _edit(model, aggregation="scoped"):
    return three_request_edit(model, 5e-2, aggregation)


def _logits(model, prompts, targets):
    with torch.no_grad():
        return model.task.logits(model.model, model.task.batch(prompts, targets))


def test_scaling_a_request_changes_only_its_own_inputs():
    model = tiny_model("llama")
    edit = _edit(model)
    with edit.applied(model):
        original = _logits(model, PROMPTS, TARGETS)
    base = _logits(model, PROMPTS, TARGETS)
    with edit.scaled([0.0, 1.0, 3.0]).applied(model):
        scaled = _logits(model, PROMPTS, TARGETS)
    assert torch.allclose(scaled[0], base[0], atol=1e-6)  # strength 0: as if not there
    assert torch.allclose(scaled[1], original[1], atol=1e-6)  # untouched
    assert not torch.allclose(scaled[2], original[2], atol=1e-4)
    for name, delta in edit.scaled([1.0, 1.0, 3.0]).deltas.items():
        rows = edit.deltas[name].example == 2
        assert torch.allclose(delta.v[rows], 3 * edit.deltas[name].v[rows])
        assert torch.equal(delta.v[~rows], edit.deltas[name].v[~rows])


def test_only_routed_edits_have_per_request_strengths():
    model = tiny_model("llama")
    edit = _edit(model, aggregation="sum")
    with pytest.raises(ValueError, match="only routed"):
        edit.scaled([1.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="only routed"):
        strongest_landing(edit)


def test_each_request_takes_the_largest_strength_at_which_its_target_still_lands(monkeypatch):
    model = tiny_model("llama")
    edit = _edit(model)
    # Request a lands up to strength 2.2, b never, c at any: a stub scorer reads the
    # strength each prompt's request is shown at off the rows of the edit being shown.
    limit = {PROMPTS[0]: 2.2, PROMPTS[1]: 0.0, PROMPTS[2]: 99.0}
    module = edit.modules[0]
    shown, scored = {}, []

    @contextlib.contextmanager
    def applied(trial, model=None):
        delta, base = trial.deltas[module], edit.deltas[module]
        for i in range(3):
            rows = base.example == i
            shown[i] = float(delta.v[rows].norm() / base.v[rows].norm())
        yield trial

    def score(model, prompts, targets, chunk=None):
        scored.append(list(prompts))
        exact = [round(shown[PROMPTS.index(p)], 3) <= limit[p] for p in prompts]
        return TargetScores([float(e) for e in exact], exact, [0.0] * len(prompts))

    monkeypatch.setattr(landing, "score_targets", score)
    monkeypatch.setattr(Edit, "applied", applied)
    landed = strongest_landing(edit, (1.0, 4.0, 2.0, 3.0))
    assert landed.strengths.tolist() == [2.0, 1.0, 4.0]  # b lands at none: kept at 1
    assert landed.landed.tolist() == [True, False, True]
    assert scored[0] == PROMPTS and scored[1] == PROMPTS[:2]  # decided requests are not scored again
    assert scored[-1] == [PROMPTS[1]]
    expected = edit.scaled([2.0, 1.0, 4.0])
    for name, delta in landed.edit.deltas.items():
        assert torch.allclose(delta.v, expected.deltas[name].v)


def test_at_strength_one_alone_the_edit_is_unchanged():
    model = tiny_model("llama")
    edit = _edit(model)
    landed = strongest_landing(edit, (1.0,))
    assert landed.strengths.tolist() == [1.0, 1.0, 1.0]
    for name, delta in landed.edit.deltas.items():
        assert torch.equal(delta.v, edit.deltas[name].v)
