"""Meta-train an editor for the pipeline: in-process, or through a launcher command.

Both paths use the same on-disk contract, so a run started one way can be resumed
or inspected the other way::

    <output_dir>/splits/{train,val}.jsonl   the records (canonical JSONL)
    <output_dir>/train-config.yaml          the TrainConfig
    <output_dir>/checkpoints/last/          resumable state (mend.training.checkpoint)
    <output_dir>/best/                      the best editor so far
    <output_dir>/metrics.jsonl              one line per validation

Resuming: ``Trainer.train(resume=True)`` continues from ``checkpoints/last`` when its
configuration and data hashes match, so a retried or restarted training step picks up
where the previous attempt stopped instead of starting over.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mend.data import EditRecord
from mend.editor.editor import Editor
from mend.models.editable import EditableModel
from mend.pipeline.config import PipelineConfig
from mend.pipeline.data import from_jsonl, to_jsonl
from mend.training.checkpoint import load_trainer_state
from mend.training.config import TrainConfig
from mend.training.data import TrainingData
from mend.training.trainer import config_hash

LogFn = Callable[[str], None]


@dataclass
class TrainOutcome:
    """What a training run left behind (JSON-serialisable via :meth:`to_dict`)."""

    output_dir: str
    best_dir: str
    last_dir: str
    steps: int
    stopped: str
    best_metric: float | None
    best_step: int | None
    train_minutes: float
    config_hash: str
    dataset_hash: str
    resumed_from_step: int = 0
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_run_dir(
    cfg: PipelineConfig, output_dir: Path, train: list[EditRecord], val: list[EditRecord]
) -> TrainConfig:
    """Write the splits and the TrainConfig the run (or a launcher) reads."""
    splits = output_dir / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    for name, records in (("train", train), ("val", val)):
        path = splits / f"{name}.jsonl"
        data = to_jsonl(records)
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
    config = cfg.train.train_config(
        model=cfg.model, dtype=cfg.dtype, output_dir=str(output_dir),
        train_path=str(splits / "train.jsonl"), val_path=str(splits / "val.jsonl"),
    )
    (output_dir / "train-config.yaml").write_text(config.to_yaml())
    return config


def read_splits(splits_dir: Path) -> TrainingData:
    return TrainingData(
        from_jsonl((splits_dir / "train.jsonl").read_bytes()),
        from_jsonl((splits_dir / "val.jsonl").read_bytes()),
        [],
    )


def resumable_step(output_dir: Path) -> int:
    """The step ``checkpoints/last`` holds (0 when there is none)."""
    last = output_dir / "checkpoints" / "last"
    return load_trainer_state(last).step if (last / "state.json").exists() else 0


def train_in_process(
    config: TrainConfig,
    data: TrainingData,
    *,
    resume: bool = True,
    on_validation: Callable[[int, dict], None] | None = None,
) -> TrainOutcome:
    """Load the base model and run :class:`mend.training.trainer.Trainer`."""
    from mend.models.editable import EditableModel
    from mend.training.trainer import Trainer

    out = Path(config.output_dir)
    start = resumable_step(out) if resume else 0
    model = EditableModel.load(config.model, dtype=config.dtype, patterns=config.editor.patterns)
    result = Trainer(config, model, data, on_validation=on_validation).train(resume=resume)
    return TrainOutcome(
        output_dir=str(out), best_dir=str(result.best_dir), last_dir=str(result.last_dir),
        steps=result.steps, stopped=result.stopped, best_metric=result.best_metric,
        best_step=result.best_step, train_minutes=round(result.train_minutes, 3),
        config_hash=config_hash(config), dataset_hash=data.train_hash,
        resumed_from_step=start, history=result.history,
    )


def train_with_launcher(
    cfg: PipelineConfig, config: TrainConfig, data: TrainingData, *, resume: bool = True,
    log: LogFn = print, on_line: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Run the configured launcher command and read back what it wrote."""
    out = Path(config.output_dir)
    start = resumable_step(out) if resume else 0
    argv = cfg.train.launcher.argv(
        python=sys.executable, config=str(out / "train-config.yaml"),
        splits=str(out / "splits"), output_dir=str(out),
    )
    log(f"launching: {' '.join(argv)}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MEND_RESUME": "1" if resume else "0"}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, bufsize=1) as proc:
        assert proc.stdout is not None
        tail: list[str] = []
        for raw in proc.stdout:
            line = raw.rstrip().split("\r")[-1]  # progress bars redraw with carriage returns
            tail = (tail + [line])[-40:]
            if on_line:
                on_line(line)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"training launcher exited with {code}; last output:\n" + "\n".join(tail))
    return outcome_from_dir(out, config, data, resumed_from_step=start)


def outcome_from_dir(out: Path, config: TrainConfig, data: TrainingData, resumed_from_step: int = 0) -> TrainOutcome:
    """Summarise a finished run from its files (used after a launcher exits)."""
    best, last = out / "best", out / "checkpoints" / "last"
    if not (best / "editor.json").exists():
        raise RuntimeError(f"training finished without an editor in {best}")
    state = load_trainer_state(last if (last / "state.json").exists() else best)
    summary_path = out / "train-summary.json"
    stopped = json.loads(summary_path.read_text()).get("stopped", "unknown") if summary_path.exists() else "unknown"
    return TrainOutcome(
        output_dir=str(out), best_dir=str(best), last_dir=str(last), steps=state.step, stopped=stopped,
        best_metric=state.best_metric, best_step=state.best_step,
        train_minutes=round(state.elapsed_s / 60, 3), config_hash=config_hash(config),
        dataset_hash=data.train_hash, resumed_from_step=resumed_from_step, history=state.history,
    )


def load_trained(cfg: PipelineConfig, editor_dir: str | Path) -> tuple[Editor, EditableModel]:
    """The editor in ``editor_dir`` and the pipeline's base model, loaded with the editor's
    target patterns and checked to be the model it was trained on."""
    editor = Editor.load(editor_dir)
    model = EditableModel.load(cfg.model, dtype=cfg.dtype, patterns=editor.config.patterns)
    editor.check_model(model, strict=True)
    return editor, model
