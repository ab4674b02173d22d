"""Typed configuration of a meta-training run (also the schema of the YAML config file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mend.editor.config import EditorConfig
from mend.overrides import apply_overrides


class DataSource(BaseModel):
    """One dataset file (local path or ``s3://`` URI) and how to read it."""

    model_config = ConfigDict(extra="forbid")

    path: str
    format: str = "auto"
    limit: int | None = None
    weight: float = Field(1.0, gt=0, description="relative sampling weight when mixing")


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: list[DataSource]
    validation: list[DataSource] | None = Field(
        None, description="held-out files; None = a deterministic split of the training files"
    )
    val_fraction: float = Field(0.1, gt=0, lt=1)
    on_error: Literal["skip", "raise"] = "skip"


class TrainConfig(BaseModel):
    """Everything a meta-training run depends on; saved with every checkpoint."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("smollm2-135m", description="folder, .gguf file, packaged or hub name")
    dtype: str = "float32"
    editor: EditorConfig = EditorConfig(down_init="xavier")
    init_editor: str | None = Field(
        None,
        description="start from this saved editor's weights, statistics and edit lrs (e.g. the "
        "champion, to fine-tune it for least-squares aggregation); what the new config adds "
        "(the least-squares regularisers) keeps its initial value; with other `editor.patterns` "
        "the networks carry over by shape (mend/editor/transplant.py)",
    )
    data: DataConfig
    seed: int = 0

    # Optimisation. One Adam over the parameter groups (network at `lr`, edit lrs at
    # `lr_edit_lrs`, least-squares log-regularisers at `lr_lambdas`): a single
    # step/zero_grad pair, so the edit lrs and regularisers are really trained.
    lr: float = 1e-4
    lr_edit_lrs: float = 1e-4
    lr_lambdas: float = Field(1e-2, gt=0, description="lr of the least-squares log-regularisers")
    c_edit: float = Field(0.1, ge=0, description="weight of the post-edit NLL on equivalence inputs")
    c_loc: float = Field(1.0, ge=0, description="weight of KL(pre || post) on locality answers")
    n_edits: int = Field(1, ge=1, description="simultaneous edits per step")
    val_n_edits: int | None = Field(
        None, ge=1, description="simultaneous edits per validation batch; None = n_edits, so the "
        "best checkpoint is chosen in the regime it is trained for"
    )
    n_loc: int = Field(4, ge=1, description="locality probes per step")
    chunk_size: int | None = Field(
        None, ge=1, description="examples per language-model pass; bounds memory for many edits per step"
    )
    equiv_includes_prompt: bool = Field(
        True, description="score the edit prompt itself besides its rephrase"
    )
    grad_accum: int = Field(1, ge=1)
    grad_clip: float = Field(100.0, gt=0)

    # Schedule.
    max_steps: int = Field(100_000, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget for training")
    val_every: int = Field(250, ge=1)
    val_size: int = Field(100, ge=1)
    early_stop_metric: str = "val/loss"
    early_stop_mode: Literal["min", "max"] = "min"
    patience: int = Field(2_000, ge=1, description="steps without improvement before stopping")
    checkpoint_every: int = Field(250, ge=1)
    output_dir: str = "runs/editor"

    @model_validator(mode="after")
    def _checks(self) -> TrainConfig:
        if self.patience < self.val_every:
            raise ValueError("patience must cover at least one validation interval")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> TrainConfig:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate(apply_overrides(raw, overrides))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
