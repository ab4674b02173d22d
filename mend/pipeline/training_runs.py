"""Where a meta-training run lives in the artifact store, and how it resumes from there.

    editors/<run_id>/checkpoints/step-<N>/{last,best}/   the newest uploaded checkpoint
    editors/<run_id>/checkpoints/latest.json             announces it (written last)
    editors/<run_id>/best/                               the published editor
    editors/<run_id>/training.json                       the finished run (written last)

A run id is a hash of everything that changes what training computes (not of its time
budget or step cap), so a retried or restarted run, here or on another machine with
the same store, finds its checkpoints. Readers only trust what a pointer file
announces, and pointer files are written after what they point to, so nobody ever
reads a half-uploaded checkpoint or editor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from mend.pipeline.config import PipelineConfig
from mend.pipeline.training import resumable_step
from mend.storage import ArtifactStore

_log = logging.getLogger(__name__)


def short_hash(value: Any, length: int = 12) -> str:
    """A short, stable hash of JSON-able ``value``."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def run_id_for(cfg: PipelineConfig, manifest: dict[str, Any]) -> str:
    """Same configuration and data -> same run id -> same checkpoints to resume from.

    The time budget and step cap are left out: extending them continues the same run.
    """
    fields = {k: v for k, v in cfg.train.train_fields().items() if k not in ("max_minutes", "max_steps")}
    key = {"train": fields, "launcher": cfg.train.launcher.kind, "model": cfg.model, "dtype": cfg.dtype,
           "data": manifest["dataset_hash"], "val": manifest["hashes"]["val"]}
    return f"{short_hash(key)}-{manifest['dataset_hash'][:8]}"


def budget_of(cfg: PipelineConfig) -> dict[str, Any]:
    """The run's time budget and step cap (what may change between attempts of one run)."""
    config = cfg.train.train_config(model=cfg.model, output_dir="-", train_path="-", val_path="-")
    return {"max_minutes": config.max_minutes, "max_steps": config.max_steps}


def pointer_key(run_id: str) -> str:
    return f"editors/{run_id}/checkpoints/latest.json"


def restore_checkpoint(store: ArtifactStore, run_id: str, output_dir: Path,
                       log: logging.Logger | logging.LoggerAdapter = _log) -> int:
    """Fetch the announced checkpoint when this machine has none or an older one.

    Returns the step training resumes from (0: from scratch).
    """
    local_step = resumable_step(output_dir)
    if not store.exists(pointer_key(run_id)):
        return local_step
    pointer = store.get_json(pointer_key(run_id))
    if pointer["step"] <= local_step:
        return local_step
    for name in ("last", "best"):
        if not pointer.get(name):
            continue
        target = output_dir / ("checkpoints/last" if name == "last" else "best")
        # Downloaded beside the target, then renamed: a killed download leaves the old one.
        tmp = target.with_name(f".{target.name}.download")
        shutil.rmtree(tmp, ignore_errors=True)
        store.download_dir(pointer[name], tmp)
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(target)
    log.info("restored the checkpoint of step %d from %s", pointer["step"], store.uri_for(pointer["last"]))
    return resumable_step(output_dir)


class CheckpointUploader:
    """Copies the newest local checkpoint (and the best editor so far) to the store,
    announces it in ``latest.json``, then deletes the one it replaces.

    Call it after every validation; it does nothing when there is nothing newer. A failed
    upload is logged and left to the next call: it must never stop training.
    """

    def __init__(self, store: ArtifactStore, run_id: str, output_dir: Path,
                 log: logging.Logger | logging.LoggerAdapter = _log):
        self.store = store
        self.run_id = run_id
        self.output_dir = output_dir
        self.log = log
        self.step = -1
        self.prefix: str | None = None

    def __call__(self, step: int) -> bool:
        """Upload if there is a newer checkpoint; returns whether one was announced."""
        last = self.output_dir / "checkpoints" / "last"
        step_n = resumable_step(self.output_dir)
        if step_n <= self.step or not (last / "editor.json").exists():
            return False
        prefix = f"editors/{self.run_id}/checkpoints/step-{step_n:08d}"
        try:
            pointer = {"step": step_n, "last": f"{prefix}/last"}
            self.store.upload_dir(last, pointer["last"])
            if (self.output_dir / "best" / "editor.json").exists():
                pointer["best"] = f"{prefix}/best"
                self.store.upload_dir(self.output_dir / "best", pointer["best"])
            self.store.put_json(pointer_key(self.run_id), pointer)
        except Exception as exc:  # noqa: BLE001 - a failed upload must not kill training
            self.log.warning("checkpoint upload failed at step %d (next validation retries): %s", step, exc)
            return False
        if self.prefix:
            for key in self.store.list(self.prefix + "/"):
                self.store.delete(key)
        self.step, self.prefix = step_n, prefix
        return True


def finished_training(store: ArtifactStore, run_id: str, budget: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a run that already finished under the same budget (its editor is stored)."""
    key = f"editors/{run_id}/training.json"
    if not store.exists(key):
        return None
    done = store.get_json(key)
    if done.get("budget") != budget or not store.exists(f"{done['editor_prefix']}/editor.json"):
        return None
    return done


def publish_editor(store: ArtifactStore, run_id: str, outcome: dict[str, Any],
                   budget: dict[str, Any]) -> dict[str, str]:
    """Upload the best editor, then ``training.json`` (last: it marks the run finished)."""
    prefix = f"editors/{run_id}/best"
    store.upload_dir(outcome["best_dir"], prefix)
    location = {"editor_prefix": prefix, "editor_uri": store.uri_for(prefix)}
    store.put_json(f"editors/{run_id}/training.json", {**outcome, **location, "budget": budget})
    return location
