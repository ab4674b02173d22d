"""Fitting a scope model: rephrases in scope, unrelated inputs out, threshold calibrated."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mend.data.records import EditRecord, LocalityProbe
from mend.scope import ScopeConfig, ScopeModel
from mend.scope.fit import (
    ScopeData,
    calibrate,
    examples_of,
    fit_choosing_layer,
    fit_scope,
    init_scope,
    measure,
    scope_data,
    thresholds_by_count,
    unrelated_inputs,
)
from mend.scope.model import RelationKey
from mend.scope.relation import RelationData, fit_relation, other_questions
from mend.scope.routing import route
from mend.scope.scores import Padded
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


def test_the_subject_test_recovers_rephrases_naming_their_subject_and_a_relation_key_picks_which_count():
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
    # A relation key decides which of those subject-test passes count: all at its lowest
    # threshold, none at the highest (no rephrase ends on its prompt's last-token state).
    relation = RelationKey(scope.d_model, 16)
    assert measure(with_subjects.with_relation(relation, -0.999), data).recall == gated.recall
    assert measure(with_subjects.with_relation(relation, 1.0), data).recall == alone.recall


def test_the_threshold_for_a_count_interpolates_in_log_count_and_survives_saving(tmp_path):
    config = ScopeConfig(threshold=0.8, count_thresholds=((100, 0.8), (10_000, 0.9)))
    assert config.threshold_at(1) == config.threshold_at(100) == 0.8
    assert abs(config.threshold_at(1_000) - 0.85) < 1e-9  # halfway in log count
    assert config.threshold_at(10_000) == config.threshold_at(10**6) == 0.9
    assert ScopeConfig(threshold=0.7).threshold_at(10**6) == 0.7  # no schedule: one threshold
    scope = ScopeModel(config, 8)
    loaded = ScopeModel.load(scope.save(tmp_path / "scope"))
    assert loaded.config == config and loaded.config.threshold_at(1_000) == config.threshold_at(1_000)
    assert scope.with_threshold(0.5).config.threshold_at(10**6) == 0.5  # an explicit threshold drops the schedule


def _random_scope_data(n_keys: int, n_negatives: int, d: int, generator) -> ScopeData:
    negatives = Padded(torch.randn(n_negatives, 3, d, generator=generator),
                       torch.ones(n_negatives, 3, dtype=torch.bool), [[1, 2, 3]] * n_negatives)
    return ScopeData(torch.randn(n_keys, d, generator=generator), torch.full((n_keys, 1, 1), -1),
                     Padded(torch.zeros(0, 1, d), torch.zeros(0, 1, dtype=torch.bool), []),
                     torch.zeros(0, dtype=torch.long), {"unrelated": negatives})


def test_thresholds_by_count_keep_the_false_positives_of_drawn_keys_within_budget():
    generator = torch.Generator().manual_seed(0)
    d, budget = 8, 0.2
    data = _random_scope_data(20, 400, d, generator)
    pool = torch.randn(600, d, generator=generator)
    scope = ScopeModel(ScopeConfig(layer=0, dim=d, threshold=0.6), d)
    with torch.no_grad():
        scope.proj.weight.copy_(torch.eye(d))
    counted = thresholds_by_count(scope, data, pool, budget, counts=(10, 100, 1_000, 100_000))
    points = counted.config.count_thresholds
    # Counts under the data's own and beyond ten times the keys at hand are left out.
    assert points[0] == (20, 0.6) and [c for c, _ in points] == [20, 100, 1_000]
    assert all(a <= b for (_, a), (_, b) in zip(points, points[1:], strict=False))  # rising with the count
    assert points[-1][1] > points[1][1] > 0.6
    # Drawing that many stored keys from the same keys, the share of unrelated inputs whose
    # best key reaches the count's threshold stays within the budget (no subject test: all of it).
    everything = torch.cat([data.keys, pool])
    queries = scope.embed(data.negatives["unrelated"].states)
    for count, threshold in points[1:]:
        rates = []
        for _ in range(20):
            keys = scope.embed(everything[torch.randint(len(everything), (count,), generator=generator)])
            best = torch.einsum("qtd,kd->qtk", queries, keys).amax(2).amax(1)
            rates.append((best >= threshold).float().mean().item())
        assert sum(rates) / len(rates) <= budget + 0.03
        assert sum(rates) / len(rates) >= budget - 0.08  # the lowest such threshold, not any high one


def test_routing_uses_the_threshold_for_the_number_of_stored_corrections():
    d = 4
    keys = torch.eye(d)
    queries = nn.functional.normalize(torch.tensor([[[0.7, 0.71, 0.0, 0.0]]]), dim=-1)  # cosine ~0.7 with key 0
    scope = ScopeModel(ScopeConfig(layer=0, dim=d, threshold=0.6, count_thresholds=((2, 0.6), (4, 0.75))), d)
    usable = torch.ones(1, 1, dtype=torch.bool)
    few = route(scope, queries, usable, [[]], keys[:2], torch.arange(2), torch.full((2, 1, 1), -1), 2)
    many = route(scope, queries, usable, [[]], keys, torch.arange(4), torch.full((4, 1, 1), -1), 4)
    assert set(few.active[0].tolist()) == {0, 1} and many.active[0].tolist() == []


def test_fitting_at_several_blocks_keeps_one_calibrated_and_raised_for_larger_counts():
    model = tiny_model("llama")
    records = _records()
    choice = fit_choosing_layer(model, {"unrelated": records[:10]}, {"unrelated": records[10:]}, [0, 1],
                                dim=16, max_false_positive_rate=0.2, steps=20)
    assert choice.layer in (0, 1) and set(choice.per_layer) == {0, 1}
    config = choice.scope.config
    assert config.layer == choice.layer
    # The schedule starts at the held-out corrections' count and its calibrated threshold;
    # with ten training keys at hand it reaches no further than ten times the fifteen.
    counts = [n for n, _ in config.count_thresholds]
    assert config.count_thresholds[0] == (5, config.threshold)
    assert counts == sorted(counts) and counts[-1] <= 150
    assert config.threshold_at(10**6) >= config.threshold
    # The kept block's scope also learned what its corrections ask.
    assert choice.scope.has_relation and choice.relation is not None
    assert choice.scope.config.relation_threshold == choice.relation.threshold
    plain = fit_choosing_layer(model, {"unrelated": records[:10]}, {"unrelated": records[10:]}, [0],
                               dim=16, max_false_positive_rate=0.2, steps=20, relation_test=False)
    assert not plain.scope.has_relation and plain.relation is None
    # Records naming no subject give the subject test nothing to fire on, and the relation key nothing to learn.
    nameless = [dataclasses.replace(r, subject=None) for r in records]
    unnamed = fit_choosing_layer(model, {"unrelated": nameless[:10]}, {"unrelated": nameless[10:]}, [0],
                                 dim=16, max_false_positive_rate=0.2, steps=20)
    assert not unnamed.scope.has_relation and unnamed.relation is None


def test_other_questions_ask_another_records_question_about_each_subject():
    records = _records()
    prompts, owners = other_questions(records, 2, seed=1)
    assert len(prompts) == 2 * len(records) and owners == [i for i in range(len(records)) for _ in range(2)]
    for prompt, owner in zip(prompts, owners, strict=True):
        record = records[owner]
        assert record.subject in prompt
        assert prompt.replace(record.subject, "{}") != record.prompt.replace(record.subject, "{}")
    assert other_questions(records[:1], 2) == ([], [])  # one question only: no other to ask


def test_a_relation_key_keeps_rephrases_and_drops_other_questions_about_their_subject(tmp_path):
    model = tiny_model("llama")
    records = _records()
    data = RelationData.of(model, records, 0)
    assert len(data.others) == 3 * len(records) and len(data.rephrases) == len(records)
    scope = ScopeModel(ScopeConfig(layer=0, dim=16), model.model.config.hidden_size)
    _, start = fit_relation(scope, data, data, steps=0, keep=0.9)  # the whitened start, untrained
    fitted, report = fit_relation(scope, data, data, steps=300, keep=0.9, lr=1e-2)
    assert report.rephrases_kept >= 0.9
    assert report.others_passing < 0.5 and report.others_passing < start.others_passing
    assert fitted.config.relation_threshold == report.threshold and not scope.has_relation
    assert fitted.fingerprint() != scope.fingerprint()  # keys made without it are not comparable
    loaded = ScopeModel.load(fitted.save(tmp_path / "scope"))
    assert loaded.config == fitted.config and loaded.fingerprint() == fitted.fingerprint()
    assert fitted.with_threshold(0.7).config.relation_threshold == report.threshold  # kept under other thresholds
    assert fitted.without_relation().fingerprint() == scope.fingerprint()  # the subject test alone again
