"""MEMIT on tiny random models: the edit lands, undoes exactly, and refuses bad records."""

import dataclasses

import pytest
import torch

from mend.baselines import MemitConfig, MemitMethod, ValueConfig, ValueStore
from mend.baselines.keys import default_layers, output_projection, subject_keys
from mend.baselines.values import compute_values
from mend.evaluation import evaluate
from tests.baselines.support import facts, target_nll, weights
from tests.support.tiny_models import tiny_model

CONFIG = MemitConfig(layers=[1, 2], lam=1.0, values=ValueConfig(steps=20, lr=0.5, clamp_norm_factor=4.0, weight_decay=0.0))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_memit_raises_each_target_and_remove_restores_the_weights_exactly(family, moments):
    model = tiny_model(family)
    records = facts()
    before_nll, before_weights = target_nll(model, records), weights(model)
    applied = MemitMethod(config=CONFIG, moments=moments).apply(model, records)
    after_nll = target_nll(model, records)
    assert (after_nll < before_nll - 0.1).all(), (before_nll, after_nll)
    changed = [n for n, w in weights(model).items() if not torch.equal(w, before_weights[n])]
    assert changed and all(n.startswith(output_projection(model, 1)) or n.startswith(output_projection(model, 2))
                           for n in changed)
    applied.remove()
    assert all(torch.equal(w, before_weights[n]) for n, w in weights(model).items())


def test_values_move_each_state_within_the_norm_clamp():
    model = tiny_model("llama")
    records = facts()
    z = compute_values(model, records, 2, CONFIG.values)
    _, state = subject_keys(model, [r.prompt for r in records], [r.subject for r in records], [2], 2)
    assert z.shape == state.shape
    moved = (z - state).norm(dim=1)
    assert (moved > 0).all() and (moved <= CONFIG.values.clamp_norm_factor * state.norm(dim=1) + 1e-4).all()


@pytest.mark.parametrize("bad,message", [
    (dict(subject=None), "has none"),
    (dict(subject="Berlin"), "does not occur"),
])
def test_a_record_without_its_subject_is_a_one_line_error_and_nothing_changes(bad, message, moments):
    model = tiny_model("llama")
    records = [facts()[0], dataclasses.replace(facts()[1], **bad)]
    before = weights(model)
    with pytest.raises(ValueError, match=message) as info:
        MemitMethod(config=CONFIG, moments=moments).apply(model, records)
    assert "\n" not in str(info.value)
    assert all(torch.equal(w, before[n]) for n, w in weights(model).items())


def test_layers_outside_the_model_are_refused(moments):
    with pytest.raises(ValueError, match="within 0..3"):
        MemitMethod(config=MemitConfig(layers=[2, 7]), moments=moments).apply(tiny_model("llama"), facts())


def test_default_layers_are_blocks_4_to_8_of_30_scaled():
    assert default_layers(30) == [4, 5, 6, 7, 8]
    assert default_layers(4) == [1]


def test_values_are_computed_once_and_reused_from_the_file(tmp_path, moments, monkeypatch):
    model = tiny_model("llama")
    path = tmp_path / "values.safetensors"
    MemitMethod(config=CONFIG, moments=moments, store=ValueStore(path)).apply(model, facts()).remove()
    assert len(ValueStore(path)) == 2

    def no_optimisation(*args, **kwargs):
        raise AssertionError("values recomputed")

    monkeypatch.setattr("mend.baselines.values.compute_values", no_optimisation)
    MemitMethod(config=CONFIG, moments=moments, store=ValueStore(path)).apply(model, facts()).remove()


def test_the_runner_scores_memit_and_finds_the_model_unchanged_after(moments):
    model = tiny_model("llama")
    before = weights(model)
    report = evaluate(MemitMethod(config=CONFIG, moments=moments), model, facts(), mode="batch", k=2,
                      generate=False, progress=False)
    assert report.summary["edit_success"] > report.summary["edit_success_pre"]
    assert all(torch.equal(w, before[n]) for n, w in weights(model).items())
