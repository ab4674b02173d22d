"""``--set key=value``: one parser and one dotted-key setter for every configuration."""

from __future__ import annotations

import pytest

from mend.overrides import apply_overrides, parse_overrides, set_dotted
from mend.pipeline.config import PipelineConfig
from mend.training.config import TrainConfig


def test_values_are_yaml_and_numbers_in_any_notation_are_numbers():
    parsed = parse_overrides(["a.b=1e6", "c=true", "d=0.5", "e=name", "lr=3e-4", "f=[1, x]", "g=null",
                              "h=inf", "url=s3://b/p?x=1"])
    assert parsed == {"a.b": 1_000_000, "c": True, "d": 0.5, "e": "name", "lr": 3e-4, "f": [1, "x"],
                      "g": None, "h": "inf", "url": "s3://b/p?x=1"}
    assert isinstance(parsed["a.b"], int) and isinstance(parsed["lr"], float)


@pytest.mark.parametrize("bad", ["novalue", "=3"])
def test_an_item_without_a_key_and_value_is_refused(bad):
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides([bad])


def test_dotted_keys_create_sections_and_leave_the_input_alone():
    raw = {"train": {"lr": 1, "editor": None}, "seed": 0}
    out = apply_overrides(raw, {"train.lr": 2, "train.editor.rank": 8, "data.sources": []})
    assert out == {"train": {"lr": 2, "editor": {"rank": 8}}, "seed": 0, "data": {"sources": []}}
    assert raw == {"train": {"lr": 1, "editor": None}, "seed": 0}
    with pytest.raises(ValueError, match="'seed' is 0, not a section"):
        set_dotted(out, "seed.x", 1)


def test_the_configs_take_the_same_overrides(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("data: {train: [{path: x}]}\n")
    train = TrainConfig.from_yaml(path, parse_overrides(["lr=3e-4", "editor.rank=8", "max_minutes=1e1"]))
    assert (train.lr, train.editor.rank, train.max_minutes) == (3e-4, 8, 10)
    pipeline = PipelineConfig.from_dict({}, parse_overrides(["train.lr=3e-4", "evaluation.n_records=100"]))
    assert pipeline.train.train_config(model="m", output_dir="o", train_path="t", val_path="v").lr == 3e-4
    assert pipeline.evaluation.n_records == 100
