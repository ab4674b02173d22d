"""The engine on the real pretrained SmolLM2-135M."""

import pytest

from mend import Edit, Editor, EditorConfig
from mend.demo import STATS_EXAMPLES as STATS  # a handful of edit examples for the statistics

pytestmark = pytest.mark.slow

EDITS = [("The capital of France is", "Rome"), ("The largest planet in the solar system is", "Mars")]
UNRELATED = "The chemical symbol for gold is"


def _greedy_starts_with(model, prompt, target):
    out = model.generate([prompt], max_new_tokens=6)[0]
    return out.strip().startswith(target), out


@pytest.fixture(scope="module")
def identity_editor(smollm2):
    editor = Editor.for_model(smollm2, EditorConfig(edit_lr_init=1e-4))
    editor.fit_normalization(smollm2, [p for p, _ in STATS], [t for _, t in STATS])
    return editor


@pytest.mark.parametrize("prompt,target", EDITS)
def test_identity_editor_makes_target_the_greedy_answer(smollm2, identity_editor, prompt, target):
    original = smollm2.generate([prompt], max_new_tokens=6)[0]
    unrelated = smollm2.generate([UNRELATED], max_new_tokens=4)[0]
    assert not original.strip().startswith(target)
    edit = identity_editor.edit(smollm2, [prompt], [target])
    with edit.applied():
        ok, edited = _greedy_starts_with(smollm2, prompt, target)
        assert ok, f"edited answer {edited!r} does not start with {target!r}"
        assert smollm2.generate([UNRELATED], max_new_tokens=4)[0] == unrelated
    assert smollm2.generate([prompt], max_new_tokens=6)[0] == original


def test_peft_export_of_a_real_edit(smollm2, identity_editor, tmp_path):
    import torch
    from peft import PeftModel

    from mend import EditableModel

    prompt, target = EDITS[0]
    edit = identity_editor.edit(smollm2, [prompt], [target])
    batch = smollm2.task.batch([prompt], [target])
    with edit.applied(), torch.no_grad():
        expected = smollm2.task.logits(smollm2.model, batch)
    edit.save(tmp_path / "edit")
    Edit.load(tmp_path / "edit").to_peft(tmp_path / "lora", "smollm2-135m")
    fresh = EditableModel.load("smollm2-135m")
    peft_model = PeftModel.from_pretrained(fresh.model, tmp_path / "lora")
    with torch.no_grad():
        got = smollm2.task.logits(peft_model, batch)
    assert torch.allclose(got, expected, atol=1e-4)
