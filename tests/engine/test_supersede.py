"""Corrections of the same question: the newer one supersedes the older."""

from __future__ import annotations

import torch

from mend import Editor, EditorConfig
from mend.data.records import EditRecord
from mend.evaluation import MendMethod, evaluate
from mend.evaluation.runner import aggregate
from mend.scope import ScopeConfig, ScopeModel
from mend.scope.scores import best_token_scores
from mend.scope.supersede import Questions, same_question, superseded_within
from tests.support.tiny_models import tiny_model

DESIGNED = "Who designed Toodyay Fire Station?"
ARCHITECT = "Who was the architect of Toodyay Fire Station?"
OTHER_SUBJECT = "Who was the architect of Kellerberrin Hall?"
SUBJECT = "Toodyay Fire Station"


def _scope(model, threshold: float) -> ScopeModel:
    torch.manual_seed(0)
    return ScopeModel(ScopeConfig(layer=0, dim=16, threshold=threshold), model.model.config.hidden_size)


def _score(scope, model, query: str, prompt: str, subject: str) -> float:
    """The learned score of ``query`` for the key of a correction of ``prompt``."""
    stored = Questions.of(scope, model, [prompt], [subject])
    asked = Questions.of(scope, model, [query], [subject])
    return best_token_scores(scope, stored.keys, asked.prompts)[0, 0].item()


def test_a_later_correction_of_the_same_question_supersedes_the_earlier_one():
    model = tiny_model("llama")
    probe = _scope(model, 0.99)
    threshold = _score(probe, model, ARCHITECT, DESIGNED, SUBJECT) - 1e-4
    scope = _scope(model, threshold)
    prompts = [DESIGNED, OTHER_SUBJECT, ARCHITECT, DESIGNED]
    subjects = [SUBJECT, "Kellerberrin Hall", SUBJECT, None]
    newer = superseded_within(scope, Questions.of(scope, model, prompts, subjects))
    # The rephrased question about the same subject replaces the first; another subject
    # asked the same way does not, nor does a correction that names no subject.
    assert newer == [2, None, None, None]


def test_corrections_of_the_same_question_with_the_same_answer_agree_and_both_stay_live():
    model = tiny_model("llama")
    probe = _scope(model, 0.99)
    scope = _scope(model, _score(probe, model, ARCHITECT, DESIGNED, SUBJECT) - 1e-4)
    questions = Questions.of(scope, model, [DESIGNED, ARCHITECT, DESIGNED], [SUBJECT, SUBJECT, SUBJECT])
    # The second agrees with the first; the third gives another answer and replaces both.
    assert superseded_within(scope, questions, ["ken duncan", "ken duncan", "wyndham lewis"]) == [2, 2, None]
    assert superseded_within(scope, questions, ["ken duncan", "ken duncan", "ken duncan"]) == [None, None, None]
    assert superseded_within(scope, questions) == [2, 2, None]  # no answers: every answer differs


def test_the_same_subject_alone_is_not_the_same_question():
    model = tiny_model("llama")
    scope = _scope(model, 0.999)  # only a prompt's own states reach it
    questions = Questions.of(scope, model, [DESIGNED, "Where is Toodyay Fire Station?"], [SUBJECT, SUBJECT])
    same = same_question(scope, questions, questions.keys, questions.subjects)
    assert same.tolist() == [[True, False], [False, True]]


def _record(i: int, prompt: str, subject: str, target: str) -> EditRecord:
    return EditRecord(record_id=f"r{i}", prompt=prompt, target=target, rephrases=(), locality=(), subject=subject)


def test_a_scoped_group_edits_the_newest_correction_of_each_question_and_scores_the_rest_apart():
    model = tiny_model("llama")
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=5e-2))
    records = [_record(0, DESIGNED, SUBJECT, "Ken Duncan"), _record(1, OTHER_SUBJECT, "Kellerberrin Hall", "Jean Paris"),
               _record(2, DESIGNED, SUBJECT, "Wyndham Lewis")]
    editor.fit_normalization(model, [r.prompt for r in records], [r.target for r in records])
    editor.scope = _scope(model, 0.999)
    method = MendMethod(editor, aggregation="scoped")
    applied = method.apply(model, records)
    assert applied.superseded == {"r0": "r2"}
    assert [r.request_id for r in applied.edit.requests] == ["r1", "r2"]
    applied.remove()
    report = evaluate(method, model, records, mode="batch", k=3, generate=False, progress=False)
    rows = {r["record_id"]: r for r in report.rows}
    assert rows["r0"]["superseded_by"] == "r2" and "superseded_by" not in rows["r2"]
    assert report.summary["superseded"] == 1
    assert report.summary["edit_success"] == (rows["r1"]["edit_success"] + rows["r2"]["edit_success"]) / 2


def test_aggregate_leaves_superseded_records_out_of_edit_metrics_but_keeps_their_locality():
    rows = [{"edit_success": 1.0, "locality": 1.0}, {"edit_success": 0.0, "locality": 0.5, "superseded_by": "x"}]
    summary = aggregate(rows)
    assert summary["edit_success"] == 1.0 and summary["locality"] == 0.75
    assert summary["superseded"] == 1 and summary["edit_success_all"] == 0.5
    assert "superseded" not in aggregate(rows[:1])
