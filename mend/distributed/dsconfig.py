"""DeepSpeed configuration files for meta-training, resolved against a TrainConfig.

One JSON file (``deepspeed_configs/*.json``) says how memory is sharded; the training
config (the same YAML the single-process ``mend train`` reads) says what is computed.
Fields that both could set are taken from the training config: a file writes
``"auto"`` for them, and a number that disagrees is an error rather than a silent
override.

The file configures two things:

* the **frozen base model**: ``zero_optimization.stage == 3`` partitions it at load time
  (``offload_param`` keeps the partitions in CPU memory); ``bf16.enabled`` stores and
  runs it in bfloat16 (the training config's ``dtype`` must agree);
* the **editor**, which the DeepSpeed engine trains: its gradients and Adam state are
  partitioned at stage >= 2 (``offload_optimizer`` keeps them in CPU memory), its
  weights too at stage 3. The editor, its optimizer and its normalisation statistics
  always stay in float32, whatever ``bf16`` says: they are a few percent of the
  memory, and the statistics need the precision.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from mend.overrides import apply_overrides
from mend.training.config import TrainConfig

AUTO = "auto"
# Keys the training config owns: ``train_micro_batch_size_per_gpu`` is one step batch
# (``n_edits`` edits with their equivalence and locality inputs).
OWNED = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")
REFUSED = {
    "optimizer": "the editor's optimiser is Adam with the training config's lr, lr_edit_lrs and lr_lambdas",
    "scheduler": "the training loop uses constant learning rates",
    "fp16": "use bf16 (fp16 needs loss scaling, which meta-training does not implement)",
    "train_batch_size": "the global batch is n_edits x grad_accum x world size; set grad_accum",
}


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed file that cannot drive meta-training as written."""


@dataclass
class ZeroSetup:
    """A DeepSpeed file, resolved."""

    raw: dict
    source: str = "<dict>"

    @classmethod
    def load(cls, path: str | Path, overrides: dict | None = None) -> ZeroSetup:
        raw = apply_overrides(json.loads(Path(path).read_text()), overrides)
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<dict>") -> ZeroSetup:
        raw = copy.deepcopy(raw)
        for key, why in REFUSED.items():
            section = raw.get(key)
            if section is not None and not (isinstance(section, dict) and section.get("enabled") is False):
                raise DeepSpeedConfigError(f"{source}: remove {key!r}: {why}")
        stage = raw.get("zero_optimization", {}).get("stage", 0)
        if stage not in (0, 1, 2, 3):
            raise DeepSpeedConfigError(f"{source}: zero_optimization.stage must be 0-3, not {stage!r}")
        return cls(raw, source)

    # -- what the file says --------------------------------------------------------
    @property
    def zero(self) -> dict:
        return self.raw.get("zero_optimization", {})

    @property
    def stage(self) -> int:
        return int(self.zero.get("stage", 0))

    @property
    def bf16(self) -> bool:
        return bool(self.raw.get("bf16", {}).get("enabled", False))

    @property
    def partitions_base(self) -> bool:
        return self.stage == 3

    @property
    def offload_param(self) -> str | None:
        device = self.zero.get("offload_param", {}).get("device", "none")
        return None if device in (None, "none") else device

    @property
    def offload_optimizer(self) -> str | None:
        device = self.zero.get("offload_optimizer", {}).get("device", "none")
        return None if device in (None, "none") else device

    @property
    def persistence_threshold(self) -> int:
        return int(float(self.zero.get("stage3_param_persistence_threshold", 1e5)))

    @property
    def base_dtype(self) -> str:
        return "bfloat16" if self.bf16 else "float32"

    # -- resolved against a training config -----------------------------------------
    def check(self, config: TrainConfig, n_targets: int | None = None) -> None:
        """Refuse a file that disagrees with the training config."""
        wanted = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": config.grad_accum,
            "gradient_clipping": config.grad_clip,
        }
        for key, value in wanted.items():
            given = self.raw.get(key, AUTO)
            if given != AUTO and float(given) != float(value):
                raise DeepSpeedConfigError(
                    f"{self.source}: {key}={given!r} but the training config implies {value!r}; "
                    f'write "auto" (the training config decides)'
                )
        dtype = {"bf16": "bfloat16", "fp32": "float32"}.get(config.dtype, config.dtype)
        if dtype != self.base_dtype:
            raise DeepSpeedConfigError(
                f"{self.source} runs the base model in {self.base_dtype} (bf16.enabled="
                f"{self.bf16}) but the training config has dtype={config.dtype!r}; "
                f"set dtype: {self.base_dtype} (or --set dtype={self.base_dtype})"
            )
        if self.stage == 3 and n_targets is not None and self.persistence_threshold < n_targets:
            # The per-matrix edit lrs are read outside any module's forward, so ZeRO-3 must
            # keep them whole on every rank ("persistent"); that takes numel <= threshold.
            raise DeepSpeedConfigError(
                f"{self.source}: zero_optimization.stage3_param_persistence_threshold="
                f"{self.persistence_threshold} must be at least the number of edited matrices "
                f"({n_targets})"
            )

    def _resolved(self, config: TrainConfig) -> dict:
        raw = copy.deepcopy(self.raw)
        raw["train_micro_batch_size_per_gpu"] = 1
        raw["gradient_accumulation_steps"] = config.grad_accum
        raw["gradient_clipping"] = config.grad_clip
        raw.setdefault("steps_per_print", 10**9)  # the trainer reports progress itself
        return raw

    def engine_config(self, config: TrainConfig) -> dict:
        """For ``deepspeed.initialize`` of the editor: float32, the file's ZeRO stage."""
        raw = self._resolved(config)
        raw["bf16"] = {"enabled": False}
        raw.pop("fp16", None)
        return raw

    def base_config(self, config: TrainConfig) -> dict:
        """For partitioning the frozen base model (``zero.Init`` via transformers)."""
        return self._resolved(config)
