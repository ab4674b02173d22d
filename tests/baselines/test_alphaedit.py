"""AlphaEdit on a tiny random LLaMA: edits land inside C's null space only."""

import torch

from mend.baselines import (
    AlphaEditConfig,
    AlphaEditMethod,
    MemitConfig,
    MemitMethod,
    ValueConfig,
    ValueStore,
)
from mend.baselines.keys import output_projection
from tests.baselines.support import facts, target_nll, weights
from tests.support.tiny_models import tiny_model

VALUES = ValueConfig(steps=20, lr=0.5, clamp_norm_factor=4.0, weight_decay=0.0)


def _threshold_and_kept(model, moments, protected=8):
    """A threshold that protects C's ``protected`` largest eigenvectors, and those vectors
    (the facts' keys are made of the same words as C's text, so protecting much more of a
    64-dimensional space would leave the edit no room)."""
    moment = moments.get(model, {1: output_projection(model, 1)})[1]
    eigenvalues, vectors = torch.linalg.eigh(moment)  # ascending
    threshold = float(eigenvalues[-protected])
    return threshold, vectors[:, eigenvalues >= threshold]


def _change(model, method, records):
    name = output_projection(model, 1)
    before = model.model.get_submodule(name).weight.detach().clone().double()
    applied = method.apply(model, records)
    change = model.model.get_submodule(name).weight.detach().double() - before
    return change, applied


def test_alphaedit_leaves_the_protected_directions_almost_unchanged_where_memit_does_not(moments):
    model = tiny_model("llama")
    threshold, kept = _threshold_and_kept(model, moments)
    records = facts()
    before_nll = target_nll(model, records)
    alpha = AlphaEditMethod(config=AlphaEditConfig(layers=[1, 2], nullspace_threshold=threshold, l2=1e-3,
                                                   values=VALUES), moments=moments)
    change, applied = _change(model, alpha, records)
    assert (target_nll(model, records) < before_nll - 0.1).all()
    applied.remove()
    memit = MemitMethod(config=MemitConfig(layers=[1, 2], lam=1.0, values=VALUES), moments=moments)
    memit_change, applied = _change(model, memit, records)
    applied.remove()
    protected = (change @ kept).norm() / change.norm()
    assert kept.shape[1] == 8
    assert protected < 1e-3, protected
    assert (memit_change @ kept).norm() / memit_change.norm() > 0.1


def test_alphaedit_reuses_memits_values(moments, monkeypatch):
    model = tiny_model("llama")
    store = ValueStore()
    MemitMethod(config=MemitConfig(layers=[1, 2], values=VALUES), moments=moments, store=store).apply(
        model, facts()).remove()

    def no_optimisation(*args, **kwargs):
        raise AssertionError("values recomputed")

    monkeypatch.setattr("mend.baselines.values.compute_values", no_optimisation)
    alpha = AlphaEditMethod(config=AlphaEditConfig(layers=[1, 2], values=VALUES), moments=moments, store=store)
    alpha.apply(model, facts()).remove()


def test_a_later_alphaedit_solve_sees_the_earlier_edits_keys_until_they_are_removed(moments):
    model = tiny_model("llama")
    before = weights(model)
    alpha = AlphaEditMethod(config=AlphaEditConfig(layers=[1, 2], values=VALUES), moments=moments)
    first = alpha.apply(model, facts()[:1])
    held = alpha._held.copy()
    second = alpha.apply(model, facts()[1:])
    assert len(alpha._held) == 2 and set(held) <= set(alpha._held)
    second.remove()
    first.remove()
    assert not alpha._held
    assert all(torch.equal(w, before[n]) for n, w in weights(model).items())
