"""An exported LoRA adapter, loaded by the peft library, reproduces the engine's edit."""

import json

import pytest
import torch
from peft import PeftModel

from mend import Edit, Editor, EditorConfig
from tests.support.tiny_models import REQUESTS, tiny_model


def _logits(model, hf_model, prompts, targets):
    batch = model.task.batch(prompts, targets)
    with torch.no_grad():
        return model.task.logits(hf_model, batch)


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
def test_peft_adapter_gives_the_same_logits(family, tmp_path):
    model = tiny_model(family)
    prompts, targets = REQUESTS[model.kind]
    editor = Editor.for_model(model, EditorConfig(rank=8, edit_lr_init=1e-2))
    editor.fit_normalization(model, prompts, targets)
    first = editor.edit(model, prompts[:1], targets[:1])
    second = editor.edit(model, prompts[1:], targets[1:])
    edit = Edit.concat([first, second])
    with edit.applied():
        expected = _logits(model, model.model, prompts, targets)
    base = _logits(model, model.model, prompts, targets)

    edit.to_peft(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["fan_in_fan_out"] is (family == "gpt2")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    peft_model = PeftModel.from_pretrained(tiny_model(family).model, tmp_path / "adapter")
    got = _logits(model, peft_model, prompts, targets)
    assert (expected - base).abs().max() > 1e-4
    assert torch.allclose(got, expected, atol=1e-5)
    merged = peft_model.merge_and_unload()
    assert torch.allclose(_logits(model, merged, prompts, targets), expected, atol=1e-4)
