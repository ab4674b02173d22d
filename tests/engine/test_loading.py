import pytest
import torch

from mend import EditableModel
from mend.models.loading import resolve_dtype
from tests.support.tiny_models import tiny_model


@pytest.mark.parametrize("family", ["llama", "t5", "bert"])
def test_load_from_folder_in_a_chosen_dtype(tmp_path, family):
    original = tiny_model(family)
    original.model.save_pretrained(tmp_path)
    original.tokenizer.save_pretrained(tmp_path)
    loaded = EditableModel.load(tmp_path, dtype="bfloat16")
    assert loaded.kind == original.kind
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert [t.module_name for t in loaded.targets] == [t.module_name for t in original.targets]
    assert not loaded.model.training


def test_patterns_given_at_load_select_targets(tmp_path):
    original = tiny_model("gpt2")
    original.model.save_pretrained(tmp_path)
    original.tokenizer.save_pretrained(tmp_path)
    loaded = EditableModel.load(tmp_path, patterns=[r"transformer\.h\.3\.mlp\.c_proj"])
    assert [t.module_name for t in loaded.targets] == ["transformer.h.3.mlp.c_proj"]


def test_unknown_dtype_is_rejected():
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8")


@pytest.mark.slow
def test_packaged_gguf_loads_as_float32_llama(smollm2):
    assert smollm2.model.config.model_type == "llama"
    assert next(smollm2.model.parameters()).dtype == torch.float32
    assert smollm2.name == "SmolLM2-135M-Instruct.Q4_1"
    assert len(smollm2.targets) == 9
