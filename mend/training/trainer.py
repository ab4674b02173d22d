"""The meta-training loop: Adam on the editor, validation, early stopping, checkpoints."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from mend.editor.editor import Editor, base_model_info
from mend.editor.transplant import transplant
from mend.models.editable import EditableModel
from mend.training.checkpoint import (
    TrainerState,
    load_optimizer,
    load_trainer_state,
    save_checkpoint,
)
from mend.training.config import TrainConfig
from mend.training.data import TrainingData
from mend.training.progress import RunProgress
from mend.training.sampler import StepSampler
from mend.training.step import MetaStep


def generic_texts(records, limit: int = 2000) -> list[str]:
    """Ordinary text from the training records (rephrases and locality probes, not the
    edits' new targets), for statistics of the model's inputs."""
    texts = []
    for record in records:
        texts += list(record.rephrases)
        texts += [f"{p.prompt} {p.answer}" for p in record.locality]
    return texts[:limit]


class TrainingDivergedError(RuntimeError):
    """A loss or gradient became NaN/inf; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    best_dir: Path
    last_dir: Path
    steps: int
    stopped: str  # "early_stopping" | "max_steps" | "time_budget"
    best_metric: float | None
    best_step: int | None
    train_minutes: float
    history: list[dict]


def config_hash(config: TrainConfig) -> str:
    # Where the run writes and how long it may take do not change what it computes.
    stable = config.model_dump(mode="json", exclude={"output_dir", "max_minutes", "max_steps"})
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def make_optimizer(editor: Editor, config: TrainConfig) -> torch.optim.Adam:
    """One Adam over the editor's groups. MEND's separate lr optimiser stepped after
    ``zero_grad`` had cleared the edit lrs' gradients, so it never moved them; one
    optimiser cannot."""
    return torch.optim.Adam(
        editor.param_groups(config.lr, config.lr_edit_lrs, config.lr_lambdas),
        # The fused kernel is ~7x faster than the default loop on CPU for these 4M-entry
        # matrices (measured here); it is also what runs on GPUs.
        fused=True,
    )


class OptimBackend(Protocol):
    """How the editor is optimised and its checkpoints written: plain torch in one
    process (:class:`TorchBackend`) or a DeepSpeed engine over ranks
    (``mend.distributed.backend.DeepSpeedBackend``). The :class:`Trainer` loop is the
    same for both.

    Rank ``rank`` of ``world_size`` runs micro-batch ``(step * grad_accum + k) *
    world_size + rank``: with gradients averaged over ranks, ``w`` ranks at
    ``grad_accum=a`` compute the step of one process at ``grad_accum=a*w``.
    """

    rank: int
    world_size: int

    def backward(self, loss: Tensor) -> None:
        """Accumulate the gradient of one micro-batch's loss (scaled by 1/grad_accum)."""

    def step(self) -> float:
        """Clip and apply the accumulated gradient; returns the global norm before
        clipping. A non-finite norm must not change the editor where avoidable."""

    def save_editor(self, directory: Path, state: TrainerState, extra: dict) -> None:
        """Write the editor (``Editor.save`` format) and ``state.json`` to ``directory``."""

    def save_last(self, directory: Path, state: TrainerState, extra: dict) -> None:
        """Write a resumable checkpoint (editor, optimizer, ``state.json``)."""

    def load_last(self, directory: Path) -> None:
        """Restore the editor and optimizer from :meth:`save_last`'s directory."""

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (the same answer on every rank)."""

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sum ``values`` over ranks."""


class TorchBackend:
    """One process: one Adam (:func:`make_optimizer`), ``clip_grad_norm_``, checkpoints
    written by :func:`save_checkpoint`."""

    rank = 0
    world_size = 1

    def __init__(self, editor: Editor, config: TrainConfig):
        self.editor = editor
        self.config = config
        self.optimizer = make_optimizer(editor, config)
        self.params = list(editor.parameters())

    def backward(self, loss: Tensor) -> None:
        (loss / self.config.grad_accum).backward()

    def step(self) -> float:
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip).item()
        if math.isfinite(grad_norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def save_editor(self, directory: Path, state: TrainerState, extra: dict) -> None:
        save_checkpoint(directory, self.editor, None, state, extra)

    def save_last(self, directory: Path, state: TrainerState, extra: dict) -> None:
        save_checkpoint(directory, self.editor, self.optimizer, state, extra)

    def load_last(self, directory: Path) -> None:
        loaded = Editor.load(directory)
        self.editor.load_state_dict(loaded.state_dict())
        load_optimizer(self.optimizer, directory)

    def any(self, flag: bool) -> bool:
        return flag

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        return values


def initial_editor(model: EditableModel, config: TrainConfig) -> Editor:
    """A fresh editor for ``config.editor``, warm-started from ``config.init_editor`` if set
    (for other matrices than it edits, see :mod:`mend.editor.transplant`)."""
    editor = Editor.for_model(model, config.editor)
    if config.init_editor is None:
        return editor
    source = Editor.load(config.init_editor)
    # Checked against its own matrices: the fingerprint covers the edited weights.
    source.check_model(model.retargeted([re.escape(t.module_name) for t in source.targets]), strict=True)
    mismatched = [
        field for field in ("rank", "n_blocks", "token_mode", "share_by_shape", "key_preconditioning")
        if getattr(source.config, field) != getattr(config.editor, field)
    ]
    if mismatched:
        raise ValueError(
            f"init_editor {config.init_editor} differs from the configured editor in {mismatched}: "
            "only the aggregation, the edited matrices and settings without weights may change"
        )
    if [t.module_name for t in source.targets] != [t.module_name for t in editor.targets]:
        transplant(source, editor)  # other matrices: networks by shape, entries by nearest layer
        return editor
    result = editor.load_state_dict(source.state_dict(), strict=False)
    if result.unexpected_keys or any(not k.startswith("log_lambdas") for k in result.missing_keys):
        raise ValueError(
            f"init_editor {config.init_editor} does not fit: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    return editor


class Trainer:
    """Meta-trains an editor for one base model on one dataset configuration."""

    def __init__(
        self,
        config: TrainConfig,
        model: EditableModel,
        data: TrainingData,
        editor: Editor | None = None,
        on_validation: Callable[[int, dict], None] | None = None,
        backend: Callable[[Editor, TrainConfig], OptimBackend] = TorchBackend,
    ):
        self.config = config
        self.model = model
        self.data = data
        self.out = Path(config.output_dir)
        self.on_validation = on_validation
        torch.manual_seed(config.seed)
        self.editor = editor or initial_editor(model, config)
        self.backend = backend(self.editor, config)
        self.is_main = self.backend.rank == 0
        self.step_fn = MetaStep(model, self.editor, config.c_edit, config.c_loc, config.chunk_size)
        self.sampler = StepSampler(
            data.train, model.task, n_edits=config.n_edits, n_loc=config.n_loc,
            seed=config.seed, equiv_includes_prompt=config.equiv_includes_prompt,
        )
        self.val_sampler = StepSampler(
            data.validation[: config.val_size], model.task, n_edits=config.val_n_edits or config.n_edits,
            n_loc=config.n_loc,
            seed=config.seed + 1, equiv_includes_prompt=config.equiv_includes_prompt,
        )
        self.state = TrainerState(
            config_hash=config_hash(config), data_hash=data.train_hash
        )

    # -- paths ------------------------------------------------------------------------
    @property
    def last_dir(self) -> Path:
        return self.out / "checkpoints" / "last"

    @property
    def best_dir(self) -> Path:
        return self.out / "best"

    def _extra(self) -> dict:
        return {
            "train_config": self.config.model_dump(mode="json"),
            "config_hash": self.state.config_hash,
            "train_data_hash": self.data.train_hash,
            "validation_data_hash": self.data.validation_hash,
            "step": self.state.step,
            "train_minutes": round(self.state.elapsed_s / 60, 3),
        }

    # -- resume -----------------------------------------------------------------------
    def resume(self) -> bool:
        """Continue from ``checkpoints/last`` if present; returns whether it did."""
        if not (self.last_dir / "state.json").exists():
            return False
        state = load_trainer_state(self.last_dir)
        if state.config_hash != self.state.config_hash:
            raise ValueError(
                f"checkpoint in {self.last_dir} was written by a different configuration "
                f"({state.config_hash} != {self.state.config_hash}); use another output_dir"
            )
        if state.data_hash != self.state.data_hash:
            raise ValueError(f"checkpoint in {self.last_dir} was trained on different data")
        self.backend.load_last(self.last_dir)
        self.state = state
        return True

    def _save_last(self) -> None:
        self.backend.save_last(self.last_dir, self.state, self._extra())

    def _micro_index(self, step: int, micro: int) -> int:
        """The sampler index of this rank's ``micro``-th micro-batch of ``step``."""
        backend = self.backend
        return (step * self.config.grad_accum + micro) * backend.world_size + backend.rank

    # -- loop -------------------------------------------------------------------------
    def train(self, resume: bool = True) -> TrainResult:
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            (self.out / "config.yaml").write_text(config.to_yaml())
        if resume:
            self.resume()
        self.editor.base_model = base_model_info(self.model)
        started = time.monotonic() - self.state.elapsed_s
        if self.config.editor.key_preconditioning == "covariance" and not bool(self.editor.key_precond_fitted):
            self.editor.fit_key_covariance(self.model, generic_texts(self.data.train))
        running: dict[str, float] = {}
        stopped = "max_steps"
        bar = RunProgress(config.max_steps, config.max_minutes, step=self.state.step,
                          elapsed_s=self.state.elapsed_s, disable=not self.is_main)
        metrics_log = (self.out / "metrics.jsonl").open("a") if self.is_main else io.StringIO()
        try:
            while self.state.step < config.max_steps:
                self.editor.train()
                for micro in range(config.grad_accum):
                    batch = self.sampler.batch(self._micro_index(self.state.step, micro))
                    out = self.step_fn(batch.to(self.model.device), update_stats=True)
                    if self.backend.any(not math.isfinite(out.metrics["loss"])):
                        self._diverged(f"loss is {out.metrics['loss']}")
                    self.backend.backward(out.loss)
                    for k, v in out.metrics.items():
                        running[k] = 0.95 * running.get(k, v) + 0.05 * v
                grad_norm = self.backend.step()
                if not math.isfinite(grad_norm):
                    self._diverged(f"gradient norm is {grad_norm}")
                self.state.step += 1
                self.state.elapsed_s = time.monotonic() - started
                bar.update(self.state.step, self.state.elapsed_s, loss=f"{running['loss']:.3f}",
                           edit=f"{running['edit_acc']:.2f}", loc=f"{running['loc_agree']:.3f}")

                step = self.state.step
                if step % config.val_every == 0 or step == config.max_steps:
                    record = {"step": step, "elapsed_s": round(self.state.elapsed_s, 1),
                              "grad_norm": grad_norm,
                              **{f"train/{k}": v for k, v in running.items()}, **self.validate()}
                    self.state.history.append(record)
                    metrics_log.write(json.dumps(record) + "\n")
                    metrics_log.flush()
                    if self.on_validation:
                        self.on_validation(step, record)
                    if self._improved(record):
                        self.backend.save_editor(self.best_dir, self.state, self._extra())
                    if step - (self.state.best_step or 0) >= config.patience:
                        stopped = "early_stopping"
                if step % config.checkpoint_every == 0 or stopped != "max_steps":
                    self._save_last()
                if stopped != "max_steps":
                    break
                if config.max_minutes and self.backend.any(self.state.elapsed_s >= 60 * config.max_minutes):
                    stopped = "time_budget"
                    break
        finally:
            bar.close()
            metrics_log.close()
        # Every rank takes the same branch: what rank 0 sees on disk decides.
        no_best = self.backend.any(self.is_main and not self.best_dir.exists())
        if stopped == "time_budget" or no_best:
            # Make sure the final state is validated and considered for "best".
            record = {"step": self.state.step, "elapsed_s": round(self.state.elapsed_s, 1), **self.validate()}
            self.state.history.append(record)
            if self._improved(record) or no_best:
                self.backend.save_editor(self.best_dir, self.state, self._extra())
        self._save_last()
        return TrainResult(
            self.best_dir, self.last_dir, self.state.step, stopped, self.state.best_metric,
            self.state.best_step, self.state.elapsed_s / 60, self.state.history,
        )

    def _improved(self, record: dict) -> bool:
        value = record[self.config.early_stop_metric]
        best = self.state.best_metric
        better = best is None or (value < best if self.config.early_stop_mode == "min" else value > best)
        if better:
            self.state.best_metric, self.state.best_step = value, self.state.step
        return better

    def _diverged(self, what: str) -> None:
        where = self.last_dir if self.last_dir.exists() else "none written yet"
        raise TrainingDivergedError(
            f"meta-training diverged at step {self.state.step}: {what}. "
            f"The last good checkpoint is kept: {where}. Lower lr or grad_clip and resume."
        )

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean step metrics over the validation edits (frozen normalisation statistics).

        The edits go in groups of ``val_n_edits`` applied together (the last partial group
        is dropped, unless there is only one). Ranks split the groups (rank ``r`` takes
        ``r, r + w, ...``); a rank short of one repeats a group at weight 0, so that every
        rank runs as many passes.
        """
        self.editor.eval()
        totals: dict[str, float] = {}
        n = max(len(self.val_sampler.records) // self.val_sampler.n_edits, 1)
        world, rank = self.backend.world_size, self.backend.rank
        for i in range(rank, -(-n // world) * world, world):
            weight = 1.0 if i < n else 0.0
            out = self.step_fn(self.val_sampler.batch(i % n).to(self.model.device), update_stats=False)
            for k, v in out.metrics.items():
                totals[k] = totals.get(k, 0.0) + weight * v / n
        totals = self.backend.sum(totals)
        self.editor.train()
        return {f"val/{k}": v for k, v in totals.items()}
