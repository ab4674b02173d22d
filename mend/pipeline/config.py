"""Typed configuration of the retraining pipeline (schema of ``configs/pipeline-*.yaml``).

    cfg = PipelineConfig.from_yaml("configs/pipeline-default.yaml", {"train.max_minutes": 5})

Every section has defaults, so ``PipelineConfig()`` alone is a runnable configuration
(the bundled zsRE training and held-out files, SmolLM2-135M, a local artifact directory and
MLflow store).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mend.overrides import apply_overrides
from mend.storage import resolve_store_uri
from mend.training.config import TrainConfig

# Package data (a link to configs/pipeline-default.yaml in a checkout, a copy in a wheel).
DEFAULT_CONFIG = Path(__file__).with_name("pipeline-default.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


SplitName = Literal["train", "val", "test"]


class SourceSpec(_Strict):
    """One input file: a local path, ``s3://bucket/key`` or ``bundled:NAME``.

    ``split`` pins every record of the file to one split (e.g. a held-out evaluation
    file to ``test``); unpinned files are split by ``DataSpec.splits``.
    """

    path: str
    format: str = "auto"
    limit: int | None = Field(None, ge=0)
    split: SplitName | None = Field(
        None, description="put every record of this file in this split (None: split by data.splits)"
    )


def _default_sources() -> list[SourceSpec]:
    return [SourceSpec(path="bundled:zsre_eval.json", split="test"), SourceSpec(path="bundled:zsre_train.json")]


class DataSpec(_Strict):
    """Input files and how they become the train/val/test splits.

    Records of a pinned source (``split: test``) go to that split, and a split that a
    pinned source fills takes no share of the unpinned records: ``splits`` is then
    renormalised over the other splits (``{train: 0.8, val: 0.1, test: 0.1}`` with a
    pinned test file splits the rest 8:1 into train and val). Records sharing a
    ``group_by`` key land together: an unpinned record whose key a pinned record
    already has follows it into the pinned split.
    """

    sources: list[SourceSpec] = Field(default_factory=_default_sources, min_length=1)
    on_error: Literal["skip", "raise"] = Field(
        "skip", description="skip (and report) malformed records, or fail on the first one"
    )
    max_error_fraction: float = Field(
        0.25, ge=0, le=1, description="fail when more than this share of the records is malformed"
    )
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 0.7, "val": 0.1, "test": 0.2})
    group_by: Literal["subject", "record_id"] = Field(
        "subject", description="records sharing this key always land in the same split"
    )
    seed: int = 0

    @field_validator("splits")
    @classmethod
    def _splits(cls, value: dict[str, float]) -> dict[str, float]:
        missing = {"train", "val", "test"} - set(value)
        if missing:
            raise ValueError(f"splits must name train, val and test (missing {sorted(missing)})")
        if abs(sum(value.values()) - 1) > 1e-9:
            raise ValueError(f"split fractions must sum to 1, got {sum(value.values())}")
        return value

    @model_validator(mode="after")
    def _unpinned_have_a_split(self) -> DataSpec:
        if any(s.split is None for s in self.sources) and not sum(self.unpinned_fractions().values()):
            raise ValueError("data.splits gives no share to the splits no source is pinned to")
        return self

    def pinned_splits(self) -> set[str]:
        """The splits a source is pinned to (they take no share of the other records)."""
        return {s.split for s in self.sources if s.split is not None}

    def unpinned_fractions(self) -> dict[str, float]:
        """``splits`` without the pinned splits, renormalised to sum to 1 (empty when nothing is left)."""
        rest = {name: f for name, f in self.splits.items() if name not in self.pinned_splits()}
        total = sum(rest.values())
        return {name: f / total for name, f in rest.items()} if total > 0 else {}


class LauncherSpec(_Strict):
    """How meta-training runs.

    ``local``: in the flow's process (single CPU/GPU). ``deepspeed``: through the
    ``deepspeed`` launcher on ``num_gpus`` GPUs. ``command``: any command line (a list of
    strings); ``deepspeed`` is ``command`` with a default template. Placeholders:
    ``{python}``, ``{config}`` (the TrainConfig YAML the flow writes), ``{splits}`` (the
    folder with ``train.jsonl``/``val.jsonl``), ``{output_dir}``, ``{num_gpus}`` and
    ``{deepspeed_config}``. The command must leave the editor in ``{output_dir}/best``.
    """

    kind: Literal["local", "deepspeed", "command"] = "local"
    num_gpus: int = Field(1, ge=1)
    deepspeed_config: str | None = Field(
        None, description="DeepSpeed JSON (deepspeed_configs/); kind deepspeed defaults to zero2_fp32.json"
    )
    command: list[str] | None = None

    DEEPSPEED_TEMPLATE: ClassVar[tuple[str, ...]] = (
        "deepspeed", "--num_gpus", "{num_gpus}", "--module", "mend.pipeline.train_main",
        "--config", "{config}", "--splits", "{splits}", "--deepspeed-config", "{deepspeed_config}",
    )

    @model_validator(mode="after")
    def _check(self) -> LauncherSpec:
        if self.kind == "command" and not self.command:
            raise ValueError("launcher kind 'command' needs a command (list of strings)")
        if self.kind == "deepspeed" and not self.deepspeed_config:
            self.deepspeed_config = "deepspeed_configs/zero2_fp32.json"
        return self

    def argv(self, **values: str) -> list[str]:
        template = self.command or (list(self.DEEPSPEED_TEMPLATE) if self.kind == "deepspeed" else [])
        values = {"num_gpus": str(self.num_gpus), "deepspeed_config": self.deepspeed_config or "", **values}
        argv = [part.format(**values) for part in template]
        # An unset --deepspeed-config drops out rather than passing "".
        if "--deepspeed-config" in argv and not self.deepspeed_config:
            i = argv.index("--deepspeed-config")
            del argv[i : i + 2]
        return argv


class TrainSpec(BaseModel):
    """Meta-training: ``launcher`` plus any :class:`TrainConfig` field (flat).

    ``data``, ``model`` and ``output_dir`` are set by the pipeline.
    """

    model_config = ConfigDict(extra="allow")

    launcher: LauncherSpec = Field(default_factory=LauncherSpec)
    upload_checkpoints: bool = Field(
        True, description="copy checkpoints to the artifact store at every validation (resume elsewhere)"
    )

    @model_validator(mode="after")
    def _valid_train_fields(self) -> TrainSpec:
        reserved = {"data", "model", "output_dir", "dtype"} & set(self.train_fields())
        if reserved:
            raise ValueError(f"train.{sorted(reserved)} are set by the pipeline, not under train:")
        self.train_config(model="m", output_dir="o", train_path="t", val_path="v")  # validates
        return self

    def train_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def train_config(self, *, model: str, output_dir: str, train_path: str, val_path: str,
                     dtype: str = "float32") -> TrainConfig:
        return TrainConfig.model_validate({
            **self.train_fields(),
            "model": model,
            "dtype": dtype,
            "output_dir": output_dir,
            "data": {"train": [{"path": train_path}], "validation": [{"path": val_path}]},
        })


class FineTuneSpec(_Strict):
    lr: float = 5e-4
    max_steps: int = Field(40, ge=1)
    c_loc: float = Field(1.0, ge=0, description="KL weight of FT+L")


class EvalSpec(_Strict):
    n_records: int | None = Field(None, ge=1, description="evaluate the first N test records (None: all)")
    baseline_records: int | None = Field(
        None, ge=1, description="evaluate the FT and FT+L baselines on only the first N of those "
        "records (None: all of them); fine-tuning costs seconds per edit on a CPU",
    )
    methods: list[Literal["mend", "ft", "ft_l"]] = Field(default_factory=lambda: ["mend", "ft", "ft_l"])
    batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 2, 4, 8], description="simultaneous edits for the multi-edit curve"
    )
    batch_methods: list[Literal["mend", "ft", "ft_l"]] = Field(default_factory=lambda: ["mend", "ft"])
    batch_records: int | None = Field(None, ge=1, description="test records used for the curve (None: all)")
    generate: bool = Field(True, description="also score greedy generation (slower)")
    ft: FineTuneSpec = Field(default_factory=FineTuneSpec)


class ScopeSpec(_Strict):
    """The scope model the pipeline fits after meta-training (:mod:`mend.pipeline.scoping`).

    Enabled, the registered editor edits ``scoped``: each correction keeps its own edit,
    switched on only for the requests in its scope (:mod:`mend.scope`). The scope is
    fitted on the train split's records that have rephrases (in scope) and locality
    prompts (out of scope); the val split chooses the block among ``layers`` and
    calibrates the threshold at ``max_fpr``.
    """

    enabled: bool = Field(True, description="fit a scope and register the editor scoped; false: summed")
    layers: list[int] = Field(default_factory=lambda: [8], min_length=1,
                              description="candidate blocks whose output states the scope reads")
    steps: int = Field(1000, ge=1, description="optimisation steps of the scope's embedding")
    dim: int = Field(128, ge=1, description="width of the scope's embedding")
    max_fpr: float = Field(0.01, gt=0, lt=1, description="false-positive budget on the val split's locality prompts")
    relation: bool = Field(True, description="requests passing the subject test must also ask the correction's question")
    seed: int = 0


class GateMetric(_Strict):
    """``candidate - champion >= min_delta`` and ``candidate >= min_value``."""

    min_delta: float = 0.0
    min_value: float | None = None


class PromotionSpec(_Strict):
    method: Literal["mend"] = "mend"
    metrics: dict[str, GateMetric] = Field(
        default_factory=lambda: {
            "edit_success": GateMetric(min_delta=0.0, min_value=0.5),
            "generalization": GateMetric(min_delta=-0.02, min_value=0.3),
            "locality": GateMetric(min_delta=-0.01, min_value=0.7),
        }
    )
    require_improvement: bool = Field(
        True, description="besides passing every threshold, beat the champion on at least one metric"
    )


def _default_store() -> str:
    # The one resolver every entry point shares ($MEND_STORE, else ./artifacts).
    return resolve_store_uri()


class StorageSpec(_Strict):
    uri: str = Field(
        default_factory=_default_store,
        description="artifact store: a directory or s3://bucket/prefix; null: $MEND_STORE, else ./artifacts",
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _env_default(cls, value: str | None) -> str:
        return value or _default_store()


class MlflowSpec(_Strict):
    tracking_uri: str | None = Field(
        None, description="None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working dir"
    )
    registry_uri: str | None = None
    experiment: str = "mend-retraining"
    model_name: str | None = Field(None, description="registered model; None: mend-editor-<model>")
    include_base_model: bool = Field(
        False, description="copy the base model's files into the logged model (small models only)"
    )
    max_new_tokens: int = Field(16, ge=1, description="default answer length of the served model")


class PipelineConfig(_Strict):
    model: str = Field("smollm2-135m", description="base model: folder, .gguf, packaged or hub name")
    dtype: str = "float32"
    data: DataSpec = Field(default_factory=DataSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    scope: ScopeSpec = Field(default_factory=ScopeSpec)
    evaluation: EvalSpec = Field(default_factory=EvalSpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    work_dir: str = Field("runs/pipeline", description="local scratch: checkpoints, downloads, plots")

    @property
    def model_name(self) -> str:
        if self.mlflow.model_name:
            return self.mlflow.model_name
        slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(self.model).name.removesuffix(".gguf")).strip("-").lower()
        return f"mend-editor-{slug}"

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
        raw = yaml.safe_load(Path(path).read_text()) if path else {}
        return cls.from_dict(raw or {}, overrides)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], overrides: dict[str, Any] | None = None) -> PipelineConfig:
        return cls.model_validate(apply_overrides(raw, overrides))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def run_params(self) -> dict[str, Any]:
        """The settings a candidate's MLflow run records as flat params (``train.lr``, ...)."""
        return {
            "model": self.model, "dtype": self.dtype,
            **_flatten("train", self.train.train_fields()),
            "train.launcher": self.train.launcher.kind,
            **_flatten("data", self.data.model_dump(mode="json", exclude={"sources"})),
            "data.sources": json.dumps([s.path if s.split is None else f"{s.path} ({s.split})"
                                        for s in self.data.sources]),
            **{f"promotion.{m}.min_delta": g.min_delta for m, g in self.promotion.metrics.items()},
            **{f"promotion.{m}.min_value": g.min_value for m, g in self.promotion.metrics.items()},
        }


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested dicts as ``prefix.key.subkey`` entries; lists as JSON text."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    return {prefix: json.dumps(value) if isinstance(value, list) else value}
