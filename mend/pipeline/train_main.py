"""Entry point a training launcher runs: ``python -m mend.pipeline.train_main``.

    python -m mend.pipeline.train_main --config RUN/train-config.yaml --splits RUN/splits
    deepspeed --num_gpus 4 --module mend.pipeline.train_main --config ... --splits ... \\
        --deepspeed-config deepspeed_configs/zero2_fp32.json

Reads the TrainConfig and the pipeline's split files the flow wrote, trains (resuming
from ``<output_dir>/checkpoints/last``) and leaves the editor in ``<output_dir>/best``
plus ``train-summary.json``. With ``--deepspeed-config`` every rank runs
``mend.distributed.train`` (the DeepSpeed ZeRO trainer, see infra/README-deepspeed.md)
on the same splits.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import SimpleNamespace

from mend.pipeline.training import read_splits
from mend.training.config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--splits", required=True, type=Path)
    parser.add_argument("--deepspeed-config", type=Path)
    parser.add_argument("--no-resume", action="store_true",
                        help="start over (also when MEND_RESUME=0 is set, as the pipeline does)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed passes it
    args = parser.parse_args(argv)
    resume = not args.no_resume and os.environ.get("MEND_RESUME", "1") != "0"

    import transformers

    transformers.utils.logging.disable_progress_bar()
    config = TrainConfig.from_yaml(args.config)
    data = read_splits(args.splits)
    if args.deepspeed_config:
        result = _train_with_deepspeed(args.config, args.deepspeed_config, data, resume)
        if result is None:  # not the main rank
            return 0
    else:
        from mend.models.editable import EditableModel
        from mend.training.trainer import Trainer

        model = EditableModel.load(config.model, dtype=config.dtype, patterns=config.editor.patterns)
        result = Trainer(config, model, data).train(resume=resume)
    summary = {"steps": result.steps, "stopped": result.stopped, "best_metric": result.best_metric,
               "best_step": result.best_step, "train_minutes": result.train_minutes}
    (Path(config.output_dir) / "train-summary.json").write_text(json.dumps(summary, indent=1))
    print(f"done: {json.dumps(summary)}", flush=True)
    return 0


def _train_with_deepspeed(config_path: Path, ds_config: Path, data, resume: bool):
    """Run ``mend.distributed.train`` (the DeepSpeed entry point) on the pipeline's splits.

    The splits are passed in: the pipeline has already validated and split the records
    (by subject), so the config's data files are not read again. Returns the main rank's
    summary of the run (read from the checkpoint), ``None`` on the other ranks.
    """
    from mend.distributed import train as ds_train
    from mend.training.checkpoint import load_trainer_state

    argv = ["--config", str(config_path), "--deepspeed", str(ds_config)] + ([] if resume else ["--no-resume"])
    code = ds_train.main(argv, data=data)
    if code:
        raise SystemExit(code)
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    out = Path(TrainConfig.from_yaml(config_path).output_dir)
    state = load_trainer_state(out / "checkpoints" / "last")
    return SimpleNamespace(steps=state.step, stopped="unknown", best_metric=state.best_metric,
                           best_step=state.best_step, train_minutes=state.elapsed_s / 60)


if __name__ == "__main__":
    from mend.distributed.world import exit_process

    exit_process(main())
