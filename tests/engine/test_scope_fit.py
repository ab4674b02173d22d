"""Fitting a scope model: rephrases in scope, unrelated inputs out, threshold calibrated."""

from __future__ import annotations

import torch

from mend.data.records import EditRecord, LocalityProbe
from mend.scope import ScopeConfig, ScopeModel
from mend.scope.fit import (
    calibrate,
    examples_of,
    fit_scope,
    init_scope,
    measure,
    scope_data,
    unrelated_inputs,
)
from mend.testing.synthetic import SUBJECTS, TEMPLATES
from tests.support.tiny_models import tiny_model

# Inputs about none of the subjects.
UNRELATED = ["Water boils at 100 degrees", "Two plus two equals four", "nq question: who sang it in 1965?",
             "Which river flows through the city?", "The song was sung in 1965"]


def _records() -> list[EditRecord]:
    """One record per subject, its template cycling, with the subject named."""
    out = []
    for i, subject in enumerate(SUBJECTS):
        prompt, rephrase = TEMPLATES[i % len(TEMPLATES)]
        out.append(EditRecord(record_id=f"s{i}", prompt=prompt.format(subject), target="Rome",
                              rephrases=(rephrase.format(subject),), subject=subject,
                              locality=(LocalityProbe(UNRELATED[i % len(UNRELATED)], "yes"),)))
    return out


def _data(model, records):
    return scope_data(model, examples_of(records), {"unrelated": unrelated_inputs(records)}, [0])[0]


def test_fitting_separates_rephrases_from_other_corrections_and_unrelated_inputs():
    model = tiny_model("llama")
    data = _data(model, _records())
    config = ScopeConfig(layer=0, dim=16, threshold=0.5)
    before = calibrate(init_scope(config, data), data, max_false_positive_rate=0.0, subject_test=False)
    fitted, report = fit_scope(config, data, steps=150, batch=16, negatives_per_step=16, lr=1e-2)
    after = calibrate(fitted, data, max_false_positive_rate=0.0, subject_test=False)
    q_before, q_after = measure(before, data), measure(after, data)
    assert report.steps == 150 and report.layer == 0
    assert q_after.false_positives["unrelated"] == 0.0  # calibrated to the budget
    # Training moves rephrases towards their own key and away from the rest.
    assert q_after.top1 > q_before.top1 and q_after.recall > q_before.recall


def test_calibration_meets_the_false_positive_budget_and_saving_keeps_the_threshold(tmp_path):
    model = tiny_model("llama")
    data = _data(model, _records())
    scope = init_scope(ScopeConfig(layer=0, dim=16), data)
    for budget in (0.0, 0.25, 0.5):
        for subject_test in (False, True):
            calibrated = calibrate(scope, data, budget, subject_test=subject_test)
            assert measure(calibrated, data).false_positives["unrelated"] <= budget
            assert calibrated.fingerprint() == scope.fingerprint()  # same embedding, other thresholds
            assert (calibrated.config.subject_threshold is not None) == subject_test
    loaded = ScopeModel.load(calibrated.save(tmp_path / "scope"))
    assert loaded.config == calibrated.config
    assert torch.equal(loaded.proj.weight, calibrated.proj.weight)


def test_the_subject_test_recovers_rephrases_that_name_their_subject():
    model = tiny_model("llama")
    data = _data(model, _records())
    scope = init_scope(ScopeConfig(layer=0, dim=16), data)
    alone = measure(calibrate(scope, data, 0.0, subject_test=False), data)
    with_subjects = calibrate(scope, data, 0.0)
    gated = measure(with_subjects, data)
    # Every rephrase names its subject and no unrelated input names any: the subject test
    # switches the rephrases on at a lower score without a single false positive.
    assert gated.false_positives["unrelated"] == 0.0
    assert gated.recall > alone.recall
    assert with_subjects.config.subject_threshold < with_subjects.config.threshold
