"""Flow ``train-editor``: meta-train a MEND editor on a prepared dataset.

    python -m flows.train_editor --manifest runs/pipeline/manifest.json [--set train.max_minutes=5]

Single process by default; ``train.launcher.kind: deepspeed`` (or ``command``) runs the
training through a launcher instead. Resumable: checkpoints go to
``<work_dir>/train/<run_id>/`` and, at every validation, to the artifact store; a retried
or restarted run (here or on another machine with the same store) continues from the
newest one (the store layout and protocol: :mod:`mend.pipeline.training_runs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.common import (
    PERSIST,
    TRANSIENT,
    ConfigArg,
    Progress,
    load_config,
    logger,
    markdown,
    md_table,
    store_for,
    table,
)
from mend.pipeline import data as pdata
from mend.pipeline import training_runs as runs
from mend.pipeline.training import (
    TrainOutcome,
    prepare_run_dir,
    resumable_step,
    train_in_process,
    train_with_launcher,
)
from mend.training.data import TrainingData
from mend.training.progress import budget_fraction


@task(name="load-splits", **TRANSIENT)
def load_splits(manifest: dict[str, Any], names: list[str]) -> dict[str, list[dict]]:
    from mend.data import record_to_dict

    store = store_for(manifest["store_uri"])
    return {name: [record_to_dict(r) for r in pdata.load_split(store, manifest, name)] for name in names}


@task(name="restore-checkpoint", **TRANSIENT)
def restore_checkpoint(store_uri: str, run_id: str, output_dir: str) -> int:
    """Fetch the newest stored checkpoint when this machine has none (or an older one)."""
    return runs.restore_checkpoint(store_for(store_uri), run_id, Path(output_dir), log=logger())


@task(name="meta-train", retries=1, retry_delay_seconds=2, **PERSIST)
def meta_train(config: dict[str, Any], splits: dict[str, list[dict]], output_dir: str, store_uri: str,
               run_id: str, resume: bool = True) -> dict[str, Any]:
    """Train (resuming from the last checkpoint); a retry continues where this attempt stopped."""
    cfg = load_config(config)
    log = logger()
    out = Path(output_dir)
    train = [pdata.record_from_dict(d) for d in splits["train"]]
    val = [pdata.record_from_dict(d) for d in splits["val"]]
    train_config = prepare_run_dir(cfg, out, train, val)
    data = TrainingData(train, val, [])
    budget = train_config.max_minutes
    progress = Progress(f"training-progress-{run_id}", f"meta-training {run_id} ({budget or '-'} min budget)",
                        every=10)
    upload = runs.CheckpointUploader(store_for(store_uri), run_id, out, log) if cfg.train.upload_checkpoints else None

    def on_validation(step: int, record: dict) -> None:
        progress(budget_fraction(step, record.get("elapsed_s", 0), train_config.max_steps, budget))
        log.info("step %d (%.1f min): val/loss=%.4f val/edit_acc=%.3f val/loc_agree=%.3f", step,
                 record.get("elapsed_s", 0) / 60, record.get("val/loss", float("nan")),
                 record.get("val/edit_acc", float("nan")), record.get("val/loc_agree", float("nan")))
        if upload:
            upload(step)

    start = resumable_step(out) if resume else 0
    log.info("meta-training %s on %d records (validation %d), %s, resuming from step %d",
             run_id, len(train), len(val), cfg.train.launcher.kind, start)
    if cfg.train.launcher.kind == "local":
        outcome: TrainOutcome = train_in_process(train_config, data, resume=resume, on_validation=on_validation)
    else:
        outcome = train_with_launcher(cfg, train_config, data, resume=resume, log=log.info,
                                      on_line=lambda line: log.info("[launcher] %s", line))
    progress(1.0, force=True)
    if upload:  # the final resume point
        upload(outcome.steps)
    return outcome.to_dict()


@task(name="find-finished-training", **TRANSIENT)
def finished_training(store_uri: str, run_id: str, budget: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a run that already finished under the same budget (its editor is stored)."""
    return runs.finished_training(store_for(store_uri), run_id, budget)


@task(name="upload-editor", **TRANSIENT)
def upload_editor(store_uri: str, run_id: str, outcome: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
    """Publish the best editor, then ``training.json`` (last: it marks the run finished)."""
    return runs.publish_editor(store_for(store_uri), run_id, outcome, budget)


@flow(name="train-editor")
def train_editor(manifest: dict[str, Any], config: ConfigArg = None, overrides: dict[str, Any] | None = None,
                 resume: bool = True) -> dict[str, Any]:
    """Meta-train an editor on ``manifest``'s train/val splits; returns where it is and how it went."""
    cfg = load_config(config, overrides)
    log = logger()
    run_id = runs.run_id_for(cfg, manifest)
    budget = runs.budget_of(cfg)
    output_dir = Path(cfg.work_dir) / "train" / run_id
    output_dir.mkdir(parents=True, exist_ok=True)
    done = finished_training(manifest["store_uri"], run_id, budget) if resume else None
    if done is not None:
        # Same data, configuration and budget as a finished run: its editor is the answer.
        log.info("%s already finished (%d steps, %s) with this budget; reusing its editor "
                 "(raise train.max_minutes to continue it, or resume=False to start over)",
                 run_id, done["steps"], done["stopped"])
        outcome, location = done, {"editor_prefix": done["editor_prefix"], "editor_uri": done["editor_uri"]}
    else:
        if resume:
            restore_checkpoint(manifest["store_uri"], run_id, str(output_dir))
        splits = load_splits(manifest, ["train", "val"])
        outcome = meta_train(cfg.to_dict(), splits, str(output_dir), manifest["store_uri"], run_id, resume)
        location = upload_editor(manifest["store_uri"], run_id, outcome, budget)

    history = outcome["history"]
    keys = ["step", "elapsed_s", "val/loss", "val/edit_acc", "val/edit_em", "val/loc_agree", "train/loss"]
    table(f"training-history-{run_id}", [{k: h.get(k) for k in keys} for h in history],
          f"validation history of {run_id}")
    markdown(
        f"training-{run_id}",
        "\n".join([
            f"# Meta-training `{run_id}`",
            f"{outcome['steps']} steps in {outcome['train_minutes']:.1f} min, stopped by {outcome['stopped']}"
            f" (resumed from step {outcome['resumed_from_step']}).",
            f"Best {cfg.train.train_fields().get('early_stop_metric', 'val/loss')} = {outcome['best_metric']}"
            f" at step {outcome['best_step']}.",
            f"Editor: `{location['editor_uri']}`",
            "",
            md_table([{k: h.get(k) for k in keys} for h in history[-15:]], keys),
        ]),
        description="meta-training summary",
    )
    return {**outcome, **location, "run_id": run_id, "store_uri": manifest["store_uri"],
            "reused": done is not None}


if __name__ == "__main__":
    from flows.cli import run_single

    run_single(train_editor, needs=("manifest",))
