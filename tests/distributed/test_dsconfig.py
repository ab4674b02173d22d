"""DeepSpeed files: the shipped ones parse; the training config stays in charge."""

from __future__ import annotations

import json

import pytest

from mend.distributed.dsconfig import DeepSpeedConfigError, ZeroSetup
from mend.training.config import TrainConfig
from tests.distributed.workload import DS_CONFIGS

SHIPPED = sorted(p.name for p in DS_CONFIGS.glob("*.json"))


def _config(**overrides) -> TrainConfig:
    return TrainConfig.model_validate({"data": {"train": [{"path": "x"}]}, **overrides})


def test_all_variants_are_shipped():
    expected = [f"{z}_{p}.json" for z in ("zero2", "zero3", "zero3_offload") for p in ("bf16", "fp32")]
    assert expected == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_resolve_against_a_training_config(name):
    setup = ZeroSetup.load(DS_CONFIGS / name)
    config = _config(dtype=setup.base_dtype, grad_accum=3, grad_clip=5.0)
    setup.check(config, n_targets=9)
    engine = setup.engine_config(config)
    assert engine["gradient_accumulation_steps"] == 3 and engine["gradient_clipping"] == 5.0
    assert engine["train_micro_batch_size_per_gpu"] == 1
    assert engine["bf16"] == {"enabled": False}  # the editor trains in float32
    assert setup.base_config(config)["bf16"]["enabled"] == name.endswith("bf16.json")
    assert setup.partitions_base == name.startswith("zero3")
    assert (setup.offload_param == "cpu") == ("offload" in name)
    # What the deepspeed package itself accepts.
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    DeepSpeedZeroConfig(**engine["zero_optimization"])


def test_disagreements_are_errors_not_silent_overrides(tmp_path):
    raw = json.loads((DS_CONFIGS / "zero3_bf16.json").read_text())
    with pytest.raises(DeepSpeedConfigError, match="dtype"):
        ZeroSetup.from_dict(raw).check(_config(dtype="float32"))
    with pytest.raises(DeepSpeedConfigError, match="gradient_accumulation_steps"):
        ZeroSetup.from_dict({**raw, "gradient_accumulation_steps": 4}).check(_config(dtype="bfloat16"))
    with pytest.raises(DeepSpeedConfigError, match="optimizer"):
        ZeroSetup.from_dict({**raw, "optimizer": {"type": "AdamW"}})
    low = {**raw, "zero_optimization": {**raw["zero_optimization"], "stage3_param_persistence_threshold": 4}}
    with pytest.raises(DeepSpeedConfigError, match="persistence_threshold"):
        ZeroSetup.from_dict(low).check(_config(dtype="bfloat16"), n_targets=9)


def test_overrides_reach_nested_fields():
    setup = ZeroSetup.load(DS_CONFIGS / "zero3_fp32.json",
                           {"zero_optimization.stage3_param_persistence_threshold": 16})
    assert setup.persistence_threshold == 16
