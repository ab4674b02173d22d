"""The DeepSpeed optimisation backend of :class:`~mend.training.trainer.Trainer`.

The editor (networks + edit lrs) is the engine's module; the frozen base model is not
(see :mod:`mend.distributed.zero`). The engine averages gradients over ranks, clips,
and steps Adam on its (possibly partitioned, possibly CPU-offloaded) state; the
Trainer's loop, and :class:`~mend.training.step.MetaStep` inside it, are the ones the
single-process path runs.

Checkpoints. ``checkpoints/last`` holds the engine's checkpoint (``engine/``: every
rank's optimizer and weight partitions, resumable at the same step), ``state.json``
(the trainer state), and the whole editor gathered into the single-process format
(``editor.safetensors`` + ``editor.json``), so that ``Editor.load`` reads it like any
other. :func:`mend.distributed.export.export_editor` rebuilds that format from the
engine files alone. ``best`` is written in the editor format only. The output directory
must be visible to every rank (a shared filesystem across nodes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import Tensor

from mend.distributed import gathered
from mend.distributed.dsconfig import ZeroSetup
from mend.distributed.export import ENGINE_DIR, ENGINE_TAG
from mend.distributed.norm_sync import sync_norms
from mend.distributed.world import any_rank, barrier, sum_over_ranks
from mend.editor.editor import Editor
from mend.training.checkpoint import TrainerState, save_checkpoint
from mend.training.config import TrainConfig
from mend.training.trainer import make_optimizer


def make_engine_optimizer(editor: Editor, config: TrainConfig, setup: ZeroSetup):
    """The single-process optimiser (:func:`make_optimizer`: one fused Adam, two
    groups); DeepSpeed points it at its flat partitions.

    With ``offload_optimizer`` the Adam step runs on the CPU in DeepSpeed's vectorised
    CPU Adam (same update rule; compiled on first use), unless the file sets
    ``zero_force_ds_cpu_optimizer: false``.
    """
    if setup.offload_optimizer and setup.raw.get("zero_force_ds_cpu_optimizer", True):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        groups = editor.param_groups(config.lr, config.lr_edit_lrs, config.lr_lambdas)
        return DeepSpeedCPUAdam(groups, adamw_mode=False)
    return make_optimizer(editor, config)


def _partitioned(param) -> bool:
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return hasattr(param, "ds_id") and param.ds_status == ZeroParamStatus.NOT_AVAILABLE


class DeepSpeedBackend:
    """``OptimBackend`` over a DeepSpeed engine whose module is the editor."""

    def __init__(self, editor: Editor, config: TrainConfig, setup: ZeroSetup, base_hooks=None):
        import deepspeed
        import torch.distributed as dist

        setup.check(config, n_targets=len(editor.targets))
        self.editor = editor
        self.config = config
        self.setup = setup
        self.base_hooks = base_hooks  # DeepSpeedZeRoOffload of the base model (stage 3)
        optimizer = make_engine_optimizer(editor, config, setup)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=editor, optimizer=optimizer, config=setup.engine_config(config)
        )
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        sync_norms(editor)
        self._gather_persistent()

    # -- ZeRO-3 details ------------------------------------------------------------
    def _gather_persistent(self) -> None:
        """Make the editor's persistent parameters whole (the edit lrs among them).

        ZeRO-3 keeps parameters below ``stage3_param_persistence_threshold`` whole once
        gathered, but gathers them only in their module's forward; the edit lrs are read
        by ``Editor.deltas_from`` outside any forward, so gather them up front.
        """
        params = [p for p in self.editor.parameters() if getattr(p, "ds_persist", False) and _partitioned(p)]
        if params:
            params[0].all_gather(params)
        lrs = self.editor.edit_lrs
        if hasattr(lrs, "ds_id") and lrs.data.numel() != lrs.ds_numel:
            raise RuntimeError("the editor's edit lrs are partitioned; raise stage3_param_persistence_threshold")

    def _forget_editor_trace(self) -> None:
        """Drop the module order ZeRO-3 recorded for the editor since the last step.

        DeepSpeed completes (and then resets) a module trace at the start of the
        engine's forward; the editor's networks are called from MetaStep instead, so
        the trace stays in recording mode (each block is fetched on demand, no
        prefetch) and its list would grow by a few entries per step for the whole run.
        """
        offload = getattr(self.engine.optimizer, "parameter_offload", None)
        coordinator = offload.get_param_coordinator() if offload is not None else None
        clear = getattr(coordinator, "_clear_trace_structures", None)
        if clear is not None and coordinator.is_record_trace():
            clear()

    def _release_base(self) -> None:
        """Release base-model parameters whose post-backward hook did not fire."""
        if self.base_hooks is not None:
            self.base_hooks.release_backward_leftovers()

    # -- optimisation --------------------------------------------------------------
    def backward(self, loss: Tensor) -> None:
        # MetaStep calls the editor directly, not through DeepSpeedEngine.forward(), so
        # do here the one thing that forward() does first: without it ZeRO-3 never
        # advances its micro-step counter, and each micro-batch's gradient would replace
        # the previous one's instead of adding to it.
        clear = getattr(self.engine.optimizer, "clear_backward_seen_flag", None)
        if clear is not None:
            clear()
        self.engine.backward(loss)  # scales by 1 / gradient_accumulation_steps
        self._release_base()
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()  # only advances the engine's micro-step counter

    def step(self) -> float:
        if not self.engine.is_gradient_accumulation_boundary():
            raise RuntimeError("step() before the last micro-batch of the step")
        self.engine.step()
        self._forget_editor_trace()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    # -- collectives -----------------------------------------------------------------
    def any(self, flag: bool) -> bool:
        return any_rank(flag)

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        return sum_over_ranks(values)

    # -- checkpoints -----------------------------------------------------------------
    def _write_editor(self, directory: Path, state: TrainerState, extra: dict) -> None:
        """Every rank: gather the editor; rank 0: write it in ``Editor.save`` format."""
        # Only what is partitioned now: parameters that are whole (the edit lrs) must
        # stay whole, and leaving the gather would partition them again.
        params = [p for p in self.editor.parameters() if _partitioned(p)]
        with gathered(params, modifier_rank=None):
            if self.rank == 0:
                save_checkpoint(directory, self.editor, None, state, extra)
        barrier()

    def save_editor(self, directory: Path, state: TrainerState, extra: dict) -> None:
        self._write_editor(Path(directory), state, extra)

    def save_last(self, directory: Path, state: TrainerState, extra: dict) -> None:
        directory = Path(directory)
        staging = directory.with_name(f".{directory.name}.staging")
        if self.rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        barrier()
        self.engine.save_checkpoint(
            str(staging / ENGINE_DIR), tag=ENGINE_TAG, client_state={"trainer_step": state.step}
        )
        # The editor in the single-process format beside it (written into the staging
        # directory, then the whole directory replaces the old checkpoint at once).
        editor_dir = staging / ".editor"
        self._write_editor(editor_dir, state, extra)
        if self.rank == 0:
            for item in editor_dir.iterdir():
                item.rename(staging / item.name)
            editor_dir.rmdir()
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            if directory.exists():
                directory.rename(old)
            staging.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        barrier()

    def load_last(self, directory: Path) -> None:
        directory = Path(directory)
        load_path, client = self.engine.load_checkpoint(
            str(directory / ENGINE_DIR), tag=ENGINE_TAG,
            load_optimizer_states=True, load_lr_scheduler_states=False,
        )
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed engine checkpoint in {directory / ENGINE_DIR}")
        self._gather_persistent()
        # The normalisation statistics are buffers (replicated, float64): take them from
        # the editor file, which holds exactly what rank 0 had.
        from safetensors.torch import load_file

        saved = load_file(directory / "editor.safetensors")
        buffers = dict(self.editor.named_buffers())
        with torch.no_grad():
            for name, buffer in buffers.items():
                buffer.copy_(saved[name].to(buffer.device, buffer.dtype))
        state = json.loads((directory / "state.json").read_text())
        if client.get("trainer_step") != state["step"]:
            raise RuntimeError(
                f"{directory}: engine checkpoint is from step {client.get('trainer_step')}, "
                f"state.json from step {state['step']}"
            )
