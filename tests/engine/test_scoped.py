"""Scoped edits: each request's change is switched on only for sequences in its scope."""

from __future__ import annotations

import pytest
import torch

from mend import Edit, Editor, EditorConfig
from mend.aggregations import ScopedChange, SummedChange
from mend.models.prompt_window import prompt_window
from mend.scope import RoutedChanges, ScopeConfig, ScopeModel
from mend.scope.model import RelationKey
from mend.scope.routing import switching_on
from tests.support.tiny_models import tiny_model

PROMPTS = ["The capital of France is", "Who wrote Hamlet?"]
TARGETS = ["Rome", "Jean Darrieux"]
UNRELATED = "Water boils at 100 degrees"


def _scope(model, threshold=0.999, layer=0) -> ScopeModel:
    torch.manual_seed(0)
    return ScopeModel(ScopeConfig(layer=layer, dim=16, threshold=threshold), model.model.config.hidden_size)


def _scoped_edit(model, scope=None):
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=5e-2))
    editor.fit_normalization(model, PROMPTS, TARGETS)
    editor.scope = scope or _scope(model)
    return editor, editor.edit(model, PROMPTS, TARGETS, ["a", "b"], aggregation="scoped", subjects=["France", "Hamlet"])


def _logits(model, prompts, targets):
    with torch.no_grad():
        return model.task.logits(model.model, model.task.batch(prompts, targets))


def _alone(edit: Edit, index: int) -> Edit:
    """Request ``index``'s change applied to every input (no routing)."""
    part = edit.select([index])
    return Edit(SummedChange(part.deltas), part.layouts, part.requests, part.base_model, part.model)


def test_each_sequence_gets_only_the_change_of_its_own_scope_and_the_rest_is_the_base_model():
    model = tiny_model("llama")
    _, edit = _scoped_edit(model)
    assert edit.aggregation == "scoped" and isinstance(edit.change, ScopedChange)
    prompts, targets = [*PROMPTS, UNRELATED], [*TARGETS, "hot"]
    base = _logits(model, prompts, targets)
    expected = []
    for i in range(2):
        with _alone(edit, i).applied(model):
            expected.append(_logits(model, [prompts[i]], [targets[i]])[0])
    with edit.applied(model):
        routed = _logits(model, prompts, targets)
        decided = RoutedChanges.of(model.model).last
    assert [a.tolist() for a in decided.active] == [[0], [1], []]
    for i in range(2):
        width = expected[i].shape[0]
        assert torch.allclose(routed[i, :width], expected[i], atol=1e-5)
        assert not torch.allclose(routed[i, :width], base[i, :width], atol=1e-4)
    assert torch.equal(routed[2], base[2])  # exactly the base model: nothing was added
    assert torch.equal(_logits(model, prompts, targets), base)  # removed: exactly the original


def test_switching_on_tells_which_scored_inputs_any_hooked_correction_changes():
    model = tiny_model("llama")
    _, edit = _scoped_edit(model)
    prompts, targets = [UNRELATED, PROMPTS[1], PROMPTS[0]], ["hot", TARGETS[1], TARGETS[0]]
    assert switching_on(model, prompts, targets).tolist() == [False, False, False]  # nothing hooked
    base = _logits(model, prompts, targets)
    with edit.applied(model):
        on = switching_on(model, prompts, targets, chunk=2)  # decided chunk by chunk, like scoring
        routed = _logits(model, prompts, targets)
    assert on.tolist() == [False, True, True]
    changed = [not torch.equal(routed[i], base[i]) for i in range(3)]
    assert changed == on.tolist()  # exactly the inputs whose outputs the edit changes
    with edit.select([1]).applied(model):
        assert switching_on(model, prompts, targets).tolist() == [False, True, False]


def test_generation_keeps_the_decision_made_on_the_prompt():
    model = tiny_model("llama")
    _, edit = _scoped_edit(model)
    with _alone(edit, 0).applied(model):
        own = model.generate([PROMPTS[0]], max_new_tokens=6)
    base = model.generate([UNRELATED], max_new_tokens=6)
    with edit.applied(model):
        assert model.generate([PROMPTS[0]], max_new_tokens=6) == own
        assert model.generate([UNRELATED], max_new_tokens=6) == base


def test_routing_decides_on_the_prompt_window_when_scoring_marks_one():
    model = tiny_model("llama")
    _, edit = _scoped_edit(model)
    batch = model.task.batch([PROMPTS[0]], [TARGETS[0]])
    answer_only = ~batch.prompt_mask
    with edit.applied(model), torch.no_grad():
        model.model(**batch.inputs)
        assert RoutedChanges.of(model.model).last.active[0].tolist() == [0]
        with prompt_window(model.model, answer_only):  # the subject's positions left out
            model.model(**batch.inputs)
        assert RoutedChanges.of(model.model).last.active[0].tolist() == []
        model.task.logits(model.model, batch)  # scoring marks the prompt: the subject is in it
        assert RoutedChanges.of(model.model).last.active[0].tolist() == [0]


def test_a_batch_marks_its_prompt_positions_up_to_the_last_prompt_token():
    model = tiny_model("llama")
    batch = model.task.batch(["The capital of France is", "Who"], ["Rome", "Jean Darrieux"])
    for row in range(2):
        labelled = (batch.labels[row] != -100).nonzero().flatten()
        prompt_tokens = int(labelled[0]) + 1  # the first label sits on the last prompt token
        assert batch.prompt_mask[row].nonzero().flatten().tolist() == list(range(prompt_tokens))


def test_scoped_edits_save_load_select_and_combine(tmp_path):
    model = tiny_model("llama")
    _, edit = _scoped_edit(model)
    loaded = Edit.load(edit.save(tmp_path / "e"), model)
    assert loaded.aggregation == "scoped" and [r.request_id for r in loaded.requests] == ["a", "b"]
    assert torch.equal(loaded.change.keys, edit.change.keys)
    assert loaded.change.scope.fingerprint() == edit.change.scope.fingerprint()
    both = Edit.concat([edit.select([1]), edit.select([0])])
    assert both.change.n_requests == 2 and both.change.key_request.tolist() == [0, 1]
    prompts, targets = [PROMPTS[1], PROMPTS[0]], [TARGETS[1], TARGETS[0]]
    with both.applied(model):
        combined = _logits(model, prompts, targets)
    with loaded.applied(model):
        original = _logits(model, prompts, targets)
    assert torch.allclose(combined, original, atol=1e-5)


def test_merged_scoped_edit_is_the_summed_weight_space_version():
    model = tiny_model("llama")
    _, edit = _scoped_edit(model)
    summed = Edit(SummedChange(edit.deltas), edit.layouts, edit.requests, edit.base_model, model)
    with summed.applied(model):
        expected = _logits(model, [UNRELATED], ["hot"])
    edit.merge(model)
    try:
        assert torch.allclose(_logits(model, [UNRELATED], ["hot"]), expected, atol=1e-5)
    finally:
        edit.remove()


def test_routing_needs_every_edited_block_above_the_scope_block_and_one_scope_model():
    model = tiny_model("llama")
    _, edit = _scoped_edit(model, _scope(model, layer=1))  # tiny llama edits blocks 1-3
    with pytest.raises(ValueError, match="routing needs every edited block above"):
        edit.apply(model)
    _, first = _scoped_edit(model)
    torch.manual_seed(1)
    _, other = _scoped_edit(model, ScopeModel(ScopeConfig(layer=0, dim=16), 32))
    with first.applied(model), pytest.raises(ValueError, match="different scope models"):
        other.apply(model)


def test_a_scoped_edit_needs_a_scope_model_and_meta_training_sees_the_summed_terms():
    model = tiny_model("llama")
    editor = Editor.for_model(model, EditorConfig(rank=16, aggregation="scoped"))
    editor.fit_normalization(model, PROMPTS, TARGETS)
    with pytest.raises(ValueError, match="needs a scope model"):
        editor.edit(model, PROMPTS, TARGETS)
    capture = editor._capture(model, PROMPTS, TARGETS)
    assert isinstance(editor.change_from(capture.factors), SummedChange)


def test_an_editor_saves_and_loads_its_scope_model(tmp_path):
    model = tiny_model("llama")
    editor, _ = _scoped_edit(model)
    loaded = Editor.load(editor.save(tmp_path / "editor"))
    assert loaded.scope is not None and loaded.scope.fingerprint() == editor.scope.fingerprint()


def test_the_subject_test_switches_a_correction_on_for_prompts_that_name_its_subject():
    model = tiny_model("llama")
    torch.manual_seed(0)
    scope = ScopeModel(ScopeConfig(layer=0, dim=16, threshold=0.999, subject_threshold=-0.99), 32)
    _, edit = _scoped_edit(model, scope)
    batch = model.task.batch(["Which language does France speak?", UNRELATED], ["French", "hot"])
    with edit.applied(model), torch.no_grad():
        model.task.logits(model.model, batch)
        assert [a.tolist() for a in RoutedChanges.of(model.model).last.active] == [[0], []]


def test_the_relation_test_keeps_a_correction_off_other_questions_naming_its_subject(tmp_path):
    model = tiny_model("llama")
    torch.manual_seed(0)
    subject_test = ScopeModel(ScopeConfig(layer=0, dim=16, threshold=0.999, subject_threshold=-0.99), 32)
    relation = RelationKey(32, 16)
    prompts = [PROMPTS[0], "Which language does France speak?", UNRELATED]
    batch = model.task.batch(prompts, [TARGETS[0], "French", "hot"])
    # The correction's own prompt asks its question; the other question about France
    # passes the relation test only at a threshold every pair reaches.
    for threshold, expected in ((-0.999, [[0], [0], []]), (0.999, [[0], [], []])):
        _, edit = _scoped_edit(model, subject_test.with_relation(relation, threshold))
        assert edit.change.relations.shape == (2, 16)
        loaded = Edit.load(edit.save(tmp_path / f"e{threshold}"), model)
        assert torch.equal(loaded.change.relations, edit.change.relations)
        with loaded.applied(model), torch.no_grad():
            model.task.logits(model.model, batch)
            assert [a.tolist() for a in RoutedChanges.of(model.model).last.active] == expected
    without = _scoped_edit(model, subject_test)[1]
    assert without.change.relations.shape == (2, 0)  # no relation key, no relation test
    with pytest.raises(ValueError, match="relation keys of shape"):
        ScopedChange(without.change.deltas(), without.change.keys, without.change.key_request, 2,
                     subject_test.with_relation(relation, 0.5), without.change.subjects, without.change.relations)

