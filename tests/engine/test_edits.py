"""Low-rank edits: apply/remove exactness, merging, composition, persistence."""

import pytest
import torch

from mend import Edit, Editor, EditorConfig
from tests.support.tiny_models import FAMILIES, REQUESTS, tiny_model

SMALL = EditorConfig(rank=16, edit_lr_init=1e-2)


def _logits(model, prompts, targets):
    batch = model.task.batch(prompts, targets)
    with torch.no_grad():
        return model.task.logits(model.model, batch)


def _editor(model, config=SMALL):
    torch.manual_seed(0)
    editor = Editor.for_model(model, config)
    prompts, targets = REQUESTS[model.kind]
    editor.fit_normalization(model, prompts, targets)
    return editor


@pytest.mark.parametrize("family", FAMILIES)
def test_apply_changes_outputs_and_remove_restores_them_exactly(family):
    model = tiny_model(family)
    prompts, targets = REQUESTS[model.kind]
    before = _logits(model, prompts, targets)
    edit = _editor(model).edit(model, prompts, targets)
    edit.apply()
    during = _logits(model, prompts, targets)
    edit.remove()
    after = _logits(model, prompts, targets)
    assert (during - before).abs().max() > 1e-4
    assert (after - before).abs().max() <= 1e-6


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5"])
def test_merged_edit_matches_hooked_edit_and_unmerges(family):
    model = tiny_model(family)
    prompts, targets = REQUESTS[model.kind]
    before = _logits(model, prompts, targets)
    weights_before = {
        t.module_name: model.model.get_submodule(t.module_name).weight.clone() for t in model.targets
    }
    edit = _editor(model).edit(model, prompts, targets)
    with edit.applied():
        hooked = _logits(model, prompts, targets)
    edit.merge()
    merged = _logits(model, prompts, targets)
    edit.unmerge()
    restored = _logits(model, prompts, targets)
    assert torch.allclose(hooked, merged, atol=1e-5)
    assert torch.allclose(restored, before, atol=1e-5)
    for name, w in weights_before.items():
        assert torch.allclose(model.model.get_submodule(name).weight, w, atol=1e-6)


def test_hooked_change_equals_dense_weight_change():
    model = tiny_model("gpt2")
    edit = _editor(model).edit(model, *REQUESTS["causal"])
    name = model.targets[0].module_name
    module = model.model.get_submodule(name)
    x = torch.randn(3, module.weight.shape[0])
    dense = edit.dense()[name]  # Conv1D layout: (d_in, d_out)
    expected = module(x) + x @ dense
    with edit.applied():
        got = module(x)
    assert torch.allclose(got, expected, atol=1e-5)


def test_batch_edit_is_concatenation_of_single_edits():
    model = tiny_model("llama")
    editor = _editor(model)
    prompts, targets = REQUESTS["causal"]
    batch = editor.edit(model, prompts, targets)
    singles = [editor.edit(model, [p], [t]) for p, t in zip(prompts, targets, strict=True)]
    joined = Edit.concat(singles)
    for name in batch.deltas:
        assert torch.allclose(batch.dense()[name], joined.dense()[name], atol=1e-5)
    # select() takes one request back out of the batch edit
    second = batch.select([1])
    assert torch.allclose(second.dense()[model.targets[0].module_name],
                          singles[1].dense()[model.targets[0].module_name], atol=1e-5)


def test_sequential_edits_stack_and_remove_independently():
    model = tiny_model("llama")
    editor = _editor(model)
    (p1, p2), (t1, t2) = REQUESTS["causal"]
    probe = (["The Eiffel Tower is"], ["Paris"])
    base = _logits(model, *probe)
    first = editor.edit(model, [p1], [t1]).apply()
    only_first = _logits(model, *probe)
    second = editor.edit(model, [p2], [t2]).apply()  # computed on the edited model
    both = _logits(model, *probe)
    first.remove()
    second_alone = _logits(model, *probe)
    second.remove()
    assert not torch.allclose(both, only_first)
    assert torch.allclose(_logits(model, *probe), base, atol=1e-6)
    with second.applied():
        assert torch.allclose(_logits(model, *probe), second_alone, atol=1e-6)


def test_edit_save_load_roundtrip(tmp_path):
    model = tiny_model("gpt2")
    prompts, targets = REQUESTS["causal"]
    edit = _editor(model).edit(model, prompts, targets, request_ids=["a", "b"])
    with edit.applied():
        expected = _logits(model, prompts, targets)
    edit.save(tmp_path / "edit")
    loaded = Edit.load(tmp_path / "edit", model)
    assert [r.request_id for r in loaded.requests] == ["a", "b"]
    with loaded.applied():
        assert torch.allclose(_logits(model, prompts, targets), expected, atol=1e-6)


def test_double_apply_and_unbound_apply_are_errors():
    model = tiny_model("gpt2")
    edit = _editor(model).edit(model, *REQUESTS["causal"])
    edit.apply()
    with pytest.raises(RuntimeError, match="already applied"):
        edit.apply()
    edit.remove()
    unbound = Edit(edit.deltas, edit.layouts, edit.requests, edit.base_model)
    with pytest.raises(ValueError, match="not bound"):
        unbound.apply()
