"""Meta-train an editor over ranks and nodes: the entry point of the launchers.

    deepspeed --num_gpus 8 --module mend.distributed.train \\
        --config configs/zsre-llama.yaml --deepspeed deepspeed_configs/zero3_bf16.json
    torchrun --nproc-per-node 8 -m mend.distributed.train \\
        --config configs/zsre-llama.yaml --deepspeed deepspeed_configs/zero3_bf16.json

Multi-node: ``deepspeed --hostfile hostfile --num_nodes 2 --num_gpus 8 --module ...`` or
``torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:PORT
-m ...`` on every node (see infra/README-deepspeed.md).

The training config is the YAML that single-process ``mend train`` reads, with the same
``--set key=value`` overrides; the loop is the same :class:`Trainer` and the step the
same :class:`MetaStep`. A global batch is ``n_edits x grad_accum x world_size`` edits;
rank ``r`` runs a fixed slice of the single-process order, so ``w`` ranks at
``grad_accum=a`` train the editor one process trains at ``grad_accum=a*w``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mend.distributed import memory

if TYPE_CHECKING:
    from mend.training.data import TrainingData


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mend.distributed.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, type=Path, help="training config (YAML)")
    parser.add_argument("--deepspeed", required=True, type=Path,
                        help="DeepSpeed JSON, e.g. deepspeed_configs/zero3_bf16.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training-config field, e.g. --set grad_accum=4")
    parser.add_argument("--ds-set", dest="ds_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a DeepSpeed field, e.g. --ds-set zero_optimization.reduce_bucket_size=1e7")
    parser.add_argument("--no-resume", action="store_true",
                        help="start afresh even if output_dir/checkpoints/last exists")
    parser.add_argument("--report", type=Path, default=None,
                        help="write per-rank JSON reports (partition sizes, memory, step times) into this folder")
    # The deepspeed launcher appends --local_rank; the environment carries it too.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


class _StepClock:
    """Wraps a backend's ``step`` to record when each optimizer step ends."""

    def __init__(self, backend):
        self.times: list[float] = []
        self._step = backend.step
        backend.step = self

    def __call__(self) -> float:
        norm = self._step()
        self.times.append(time.perf_counter())
        return norm

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def main(argv: list[str] | None = None, data: TrainingData | None = None) -> int:
    """Train as the command line ``argv`` says, on ``data`` if given (the pipeline passes
    the splits it prepared), else on the records the training config's files hold."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from mend.distributed.world import init_world

    world = init_world()
    baseline = memory.rss_bytes()

    # Imported after the baseline, so that the memory report (--report) counts what
    # training holds, not what importing transformers and the trainer costs.
    import transformers

    from mend.distributed import zero
    from mend.distributed.backend import DeepSpeedBackend
    from mend.distributed.dsconfig import ZeroSetup
    from mend.overrides import parse_overrides
    from mend.training.config import TrainConfig
    from mend.training.data import load_training_data
    from mend.training.trainer import Trainer

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if not world.is_main:
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)

    config = TrainConfig.from_yaml(args.config, parse_overrides(args.overrides))
    setup = ZeroSetup.load(args.deepspeed, parse_overrides(args.ds_overrides))
    setup.check(config)
    if data is None:
        data = load_training_data(config.data, config.seed)

    model = zero.load_base_model(config, setup, world.device)
    base_hooks = zero.attach_gather_hooks(model.model, setup, config) if setup.partitions_base else None
    after_load = memory.snapshot()
    base_partition = zero.partition_report(model.model, world.world_size)

    trainer = Trainer(
        config, model, data,
        backend=lambda editor, cfg: DeepSpeedBackend(editor, cfg, setup, base_hooks),
    )
    if setup.partitions_base:
        # Replaying the frozen prefix overrides block forwards; under ZeRO-3 their gather
        # hooks would still fire, and the early exit it uses would leave the parameter
        # coordinator mid-pass. Full passes instead (same values).
        trainer.step_fn.prefix.enabled = False
    clock = _StepClock(trainer.backend)
    editor_partition = zero.partition_report(trainer.editor, world.world_size)
    before_train = memory.snapshot()
    peak_reset = memory.reset_peak()

    result = trainer.train(resume=not args.no_resume)
    after_train = memory.snapshot()

    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
        report = {
            "rank": world.rank,
            "world_size": world.world_size,
            "zero_stage": setup.stage,
            "offload_param": setup.offload_param,
            "offload_optimizer": setup.offload_optimizer,
            "base_dtype": setup.base_dtype,
            "base_partition": base_partition,
            "editor_partition": editor_partition,
            "memory": {
                "rss_baseline": baseline,
                "after_load": after_load,
                "before_train": before_train,
                "after_train": after_train,
                "peak_reset": peak_reset,
            },
            "step_seconds": clock.step_seconds(),
            "steps": result.steps,
            "stopped": result.stopped,
            "history": result.history,
            "best_dir": str(result.best_dir),
            "last_dir": str(result.last_dir),
        }
        (args.report / f"rank{world.rank}.json").write_text(json.dumps(report, indent=1))
    if world.is_main:
        print(
            f"done after {result.steps} steps ({result.train_minutes:.1f} min, {result.stopped}); "
            f"best {config.early_stop_metric}={result.best_metric} at step {result.best_step}; "
            f"editor: {result.best_dir}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    from mend.distributed.world import exit_process

    exit_process(main())
