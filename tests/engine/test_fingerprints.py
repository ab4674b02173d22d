"""The weights fingerprint names the weights alone; records written before it (a
fingerprint of the target set too) still load and compare."""

import re

import pytest
import torch

from mend import Edit, Editor, EditorConfig
from mend.editor.editor import IncompatibleModelError, base_model_info
from mend.models.fingerprints import same_weights
from tests.support.tiny_models import REQUESTS, tiny_model


def _other_patterns(model):
    """The same model, editing only the first of its default matrices."""
    return model.retargeted([re.escape(model.targets[0].module_name)])


def test_the_same_weights_loaded_with_other_patterns_keep_their_weights_fingerprint():
    model = tiny_model("llama")
    narrower = _other_patterns(model)
    assert len(narrower.targets) < len(model.targets)
    assert narrower.weights_fingerprint() == model.weights_fingerprint()
    assert narrower.targets_fingerprint() != model.targets_fingerprint()


def test_a_weight_outside_the_edited_matrices_changes_the_weights_fingerprint():
    model = tiny_model("llama")
    before = model.weights_fingerprint(), model.targets_fingerprint()
    with torch.no_grad():
        model.model.get_input_embeddings().weight[0, 0] += 1.0
    assert model.weights_fingerprint() != before[0]
    assert model.targets_fingerprint() == before[1]  # what the old fingerprint missed


def test_an_editor_accepts_its_model_loaded_with_other_patterns_and_refuses_other_weights():
    model = tiny_model("llama")
    editor = Editor.for_model(model, EditorConfig(rank=8))
    assert editor.base_model["weights_fingerprint"] == model.weights_fingerprint()
    assert _other_patterns(model).matches(editor.base_model)
    with pytest.raises(IncompatibleModelError, match="fingerprint"):
        editor.check_model(tiny_model("llama", seed=1))


def test_a_record_written_before_the_weights_fingerprint_is_checked_by_its_old_one(tmp_path):
    model = tiny_model("llama")
    old = {k: v for k, v in base_model_info(model).items() if k != "weights_fingerprint"}
    assert model.matches(old)
    assert not tiny_model("llama", seed=1).matches(old)
    assert same_weights(old, base_model_info(model))  # compared by the key both carry
    assert not same_weights(old, base_model_info(tiny_model("llama", seed=1)))

    # An edit saved with the old record combines with one made now.
    editor = Editor.for_model(model, EditorConfig(rank=8))
    prompts, targets = REQUESTS["causal"]
    editor.fit_normalization(model, prompts, targets)
    first = editor.edit(model, prompts[:1], targets[:1], ["a"])
    first.base_model = old
    first.save(tmp_path / "old")
    both = Edit.concat([Edit.load(tmp_path / "old"), editor.edit(model, prompts[1:], targets[1:], ["b"])])
    assert [r.request_id for r in both.requests] == ["a", "b"]
