"""Training checkpoints without pickle: safetensors for tensors, JSON for the rest.

A checkpoint directory holds the editor (``editor.safetensors`` + ``editor.json``,
normalisation statistics included), ``optimizer.safetensors`` + ``optimizer.json``
and ``state.json`` (step, best metric, history). It is written into a temporary
directory and renamed into place, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mend.editor.editor import Editor


@dataclass
class TrainerState:
    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    elapsed_s: float = 0.0
    history: list[dict] = field(default_factory=list)
    config_hash: str = ""
    data_hash: str = ""


def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    save_file(tensors, directory / "optimizer.safetensors")
    (directory / "optimizer.json").write_text(
        json.dumps({"param_groups": state["param_groups"], "scalars": scalars})
    )


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    meta = json.loads((directory / "optimizer.json").read_text())
    tensors = load_file(directory / "optimizer.safetensors")
    per_param: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    groups = meta["param_groups"]
    for group in groups:  # JSON turned tuples into lists
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})


def save_checkpoint(
    directory: Path, editor: Editor, optimizer: torch.optim.Optimizer | None, state: TrainerState,
    extra: dict | None = None,
) -> Path:
    """Atomically write a checkpoint to ``directory`` (replacing an older one)."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    editor.save(tmp, extra=extra)
    if optimizer is not None:
        save_optimizer(optimizer, tmp)
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=1))
    old = directory.with_name(f".{directory.name}.old{os.getpid()}")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def load_trainer_state(directory: Path) -> TrainerState:
    return TrainerState(**json.loads((Path(directory) / "state.json").read_text()))
