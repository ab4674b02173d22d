import pytest

from mend.models.targets import find_targets
from tests.support.tiny_models import FAMILIES, tiny_model

EXPECTED = {
    # family: (number of edited matrices, layout)
    "gpt2": (6, "conv1d"),
    "llama": (9, "linear"),
    "mistral": (9, "linear"),
    "qwen2": (9, "linear"),
    "gpt_neo": (6, "linear"),
    "gptj": (6, "linear"),
    "t5": (8, "linear"),
    "bart": (8, "linear"),
    "bert": (6, "linear"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_default_targets_are_the_last_mlp_blocks(family):
    model = tiny_model(family)
    count, layout = EXPECTED[family]
    assert len(model.targets) == count
    assert {t.layout for t in model.targets} == {layout}
    names = " ".join(t.module_name for t in model.targets)
    assert ".0." not in names  # never the first block


def test_seq2seq_defaults_cover_encoder_and_decoder():
    names = [t.module_name for t in tiny_model("t5").targets]
    assert sum("encoder" in n for n in names) == 4
    assert sum("decoder" in n for n in names) == 4
    assert all(".block.1." in n or ".block.2." in n for n in names)


def test_conv1d_shapes_are_read_in_transposed_layout():
    model = tiny_model("gpt2")
    c_fc = next(t for t in model.targets if t.module_name.endswith("c_fc"))
    assert (c_fc.d_in, c_fc.d_out) == (32, 128)
    assert model.model.get_submodule(c_fc.module_name).weight.shape == (32, 128)


def test_pattern_matching_nothing_lists_candidates():
    model = tiny_model("llama")
    with pytest.raises(ValueError) as err:
        find_targets(model.model, [r"model\.layers\.\d+\.mlp\.fc_in"])
    message = str(err.value)
    assert "matches no Linear/Conv1D module" in message
    assert "model.layers.{0..3}.mlp.gate_proj" in message


def test_explicit_patterns_select_exactly_those_modules():
    model = tiny_model("llama")
    targets = find_targets(model.model, [r"model\.layers\.3\.mlp\.down_proj"])
    assert [t.module_name for t in targets] == ["model.layers.3.mlp.down_proj"]
