"""The checkpoint-sync protocol of a training run in the artifact store, without Prefect.

A run's output folder is faked with the files the protocol reads (``state.json`` for
the step, ``editor.json`` for "there is an editor"), so these tests run in milliseconds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from mend.pipeline import training_runs as runs
from mend.pipeline.config import PipelineConfig
from mend.storage import open_store


def _checkpoint(out: Path, step: int, best: bool = True) -> None:
    """What Trainer leaves after ``step`` steps: checkpoints/last and (maybe) best."""
    for folder in [out / "checkpoints" / "last", *([out / "best"] if best else [])]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "editor.json").write_text(json.dumps({"step": step}))
        (folder / "state.json").write_text(json.dumps({"step": step}))


@pytest.fixture
def store(tmp_path):
    return open_store(tmp_path / "store")


def test_upload_announces_the_newest_checkpoint_and_drops_the_previous(store, tmp_path):
    out = tmp_path / "run"
    upload = runs.CheckpointUploader(store, "r1", out)
    assert not upload(0)  # nothing written yet
    _checkpoint(out, 10)
    assert upload(10)
    assert store.get_json(runs.pointer_key("r1")) == {
        "step": 10, "last": "editors/r1/checkpoints/step-00000010/last",
        "best": "editors/r1/checkpoints/step-00000010/best"}
    assert not upload(10)  # same checkpoint: no second upload
    _checkpoint(out, 20, best=False)
    (out / "best" / "editor.json").unlink()
    assert upload(20)
    keys = store.list("editors/r1/checkpoints/")
    assert not any("step-00000010" in k for k in keys)  # the replaced one is deleted
    assert "best" not in store.get_json(runs.pointer_key("r1"))


def test_a_failed_upload_is_logged_and_retried_later(store, tmp_path, caplog, monkeypatch):
    out = tmp_path / "run"
    _checkpoint(out, 10)
    upload = runs.CheckpointUploader(store, "r1", out, log=logging.getLogger("t"))
    real = store.put_json
    monkeypatch.setattr(store, "put_json", lambda *a, **k: (_ for _ in ()).throw(OSError("503")))
    with caplog.at_level(logging.WARNING):
        assert not upload(10)
    assert "checkpoint upload failed at step 10" in caplog.text
    assert not store.exists(runs.pointer_key("r1"))  # never announced half-way
    monkeypatch.setattr(store, "put_json", real)
    assert upload(10)
    assert store.get_json(runs.pointer_key("r1"))["step"] == 10


def test_restore_fetches_a_newer_checkpoint_only(store, tmp_path):
    first = tmp_path / "machine-a"
    _checkpoint(first, 30)
    runs.CheckpointUploader(store, "r1", first)(30)

    fresh = tmp_path / "machine-b"
    assert runs.restore_checkpoint(store, "r1", fresh) == 30
    assert json.loads((fresh / "best" / "state.json").read_text())["step"] == 30
    assert not list(fresh.rglob(".*download"))

    ahead = tmp_path / "machine-c"
    _checkpoint(ahead, 40)
    assert runs.restore_checkpoint(store, "r1", ahead) == 40  # local is newer: kept
    assert runs.restore_checkpoint(store, "other-run", tmp_path / "empty") == 0


def test_a_finished_run_is_reused_only_under_the_same_budget(store, tmp_path):
    out = tmp_path / "run"
    _checkpoint(out, 50)
    budget = {"max_minutes": 5, "max_steps": 100}
    assert runs.finished_training(store, "r1", budget) is None
    location = runs.publish_editor(store, "r1", {"best_dir": str(out / "best"), "steps": 50}, budget)
    assert location["editor_prefix"] == "editors/r1/best"
    assert runs.finished_training(store, "r1", budget)["steps"] == 50
    assert runs.finished_training(store, "r1", {**budget, "max_minutes": 10}) is None
    store.delete("editors/r1/best/editor.json")
    assert runs.finished_training(store, "r1", budget) is None  # record without its editor


def test_run_ids_ignore_the_budget_but_not_what_training_computes():
    manifest = {"dataset_hash": "d" * 64, "hashes": {"val": "v"}}
    base = PipelineConfig.from_dict({})
    longer = PipelineConfig.from_dict({}, {"train.max_minutes": 30, "train.max_steps": 5})
    other_lr = PipelineConfig.from_dict({}, {"train.lr": 0.5})
    assert runs.run_id_for(base, manifest) == runs.run_id_for(longer, manifest)
    assert runs.run_id_for(base, manifest) != runs.run_id_for(other_lr, manifest)
    assert runs.run_id_for(base, manifest).endswith("-dddddddd")
    assert runs.budget_of(longer) == {"max_minutes": 30, "max_steps": 5}
