"""The flows through a temporary Prefect API, on a tiny model: data, training, the pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.flows.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("prefect_server")


def artifacts_with_key(prefix: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=f"{prefix}%")))
    return [a for a in found if (a.key or "").startswith(prefix)]


def task_state(flow_run_id, name: str) -> str:
    """The state name of the task run called ``name`` inside ``flow_run_id`` (subflows included)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id, *(r.id for r in children)])))
    states = [r.state.name for r in runs if r.name.startswith(name)]
    assert len(states) == 1, (name, states)
    return states[0]


def test_prepare_data_reports_rejected_records_and_caches_on_the_input_hash(tmp_path, tiny_model_dir, tiny_data):
    from flows.prepare_data import prepare_data

    cfg = tiny_config(tmp_path, tiny_model_dir, [str(tiny_data)])
    state = prepare_data(cfg, return_state=True)
    manifest = state.result()
    assert manifest["n_rejected"] == 1 and sum(manifest["counts"].values()) == 48
    manifest_file = tmp_path / "store" / "datasets" / manifest["input_hash"] / "manifest.json"
    written = manifest_file.stat().st_mtime_ns
    assert task_state(state.state_details.flow_run_id, "build-dataset") == "Completed"

    # This run's table: other tests in the session may prepare the same data.
    (table,) = [a for a in artifacts_with_key(f"rejected-records-{manifest['input_hash'][:12]}")
                if a.flow_run_id == state.state_details.flow_run_id]
    assert table.type == "table" and '"field": "alt"' in str(table.data) and '"index": 3' in str(table.data)

    again = prepare_data(cfg, return_state=True)
    assert again.result() == manifest
    assert task_state(again.state_details.flow_run_id, "build-dataset") == "Cached"
    assert manifest_file.stat().st_mtime_ns == written
    # The store lost the dataset: the cache entry no longer counts, the data is prepared again.
    shutil.rmtree(tmp_path / "store" / "datasets")
    rebuilt = prepare_data(cfg, return_state=True)
    assert rebuilt.result() == manifest and manifest_file.exists()
    assert task_state(rebuilt.state_details.flow_run_id, "build-dataset") == "Completed"
    # Other settings, other hash, new preparation.
    other = prepare_data(cfg, overrides={"data.seed": 1})
    assert other["input_hash"] != manifest["input_hash"]


def test_train_editor_resumes_here_and_from_the_store(tmp_path, tiny_model_dir, tiny_data):
    from flows.prepare_data import prepare_data
    from flows.train_editor import train_editor

    cfg = tiny_config(tmp_path, tiny_model_dir, [str(tiny_data)])
    manifest = prepare_data(cfg)
    first = train_editor(manifest, cfg, overrides={"train.max_steps": 10})
    assert (first["steps"], first["resumed_from_step"]) == (10, 0)
    assert (tmp_path / "store" / first["editor_prefix"] / "editor.safetensors").exists()

    # A longer budget continues the same run.
    second = train_editor(manifest, cfg, overrides={"train.max_steps": 20})
    assert second["run_id"] == first["run_id"] and (second["steps"], second["resumed_from_step"]) == (20, 10)

    # Another machine (no local files) resumes from the checkpoint in the artifact store.
    shutil.rmtree(tmp_path / "work")
    third = train_editor(manifest, cfg, overrides={"train.max_steps": 30})
    assert (third["steps"], third["resumed_from_step"]) == (30, 20)
    assert [h["step"] for h in third["history"]] == [10, 20, 30] and not third["reused"]

    # Finished with this budget already: the stored editor is reused, nothing is trained.
    fourth = train_editor(manifest, cfg, overrides={"train.max_steps": 30})
    assert fourth["reused"] and fourth["steps"] == 30 and fourth["editor_uri"] == third["editor_uri"]
    progress = artifacts_with_key(f"training-progress-{first['run_id']}")
    assert progress and progress[-1].type == "progress" and progress[-1].data == 100.0


def test_training_through_a_launcher_command(tmp_path, tiny_model_dir, tiny_data):
    from flows.prepare_data import prepare_data
    from flows.train_editor import train_editor

    launcher = {"kind": "command", "command": ["{python}", "-m", "mend.pipeline.train_main",
                                               "--config", "{config}", "--splits", "{splits}"]}
    cfg = tiny_config(tmp_path, tiny_model_dir, [str(tiny_data)], train={"launcher": launcher, "max_steps": 10})
    manifest = prepare_data(cfg)
    out = train_editor(manifest, cfg)
    assert (out["steps"], out["stopped"]) == (10, "max_steps")
    assert Path(out["best_dir"], "editor.json").exists()

    failing = {"kind": "command", "command": ["{python}", "-c", "import sys; print('no GPUs'); sys.exit(3)"]}
    with pytest.raises(RuntimeError, match="exited with 3"):
        train_editor(manifest, cfg, overrides={"train.launcher": failing, "train.seed": 1})


@pytest.mark.slow
def test_retrain_pipeline_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir, tiny_data, capsys):
    from flows.__main__ import print_summary
    from flows.retrain_pipeline import retrain_pipeline
    from mend.editor.editor import Editor
    from mend.models.editable import EditableModel

    cfg = tiny_config(tmp_path, tiny_model_dir, [str(tiny_data)])
    summary = retrain_pipeline(cfg)
    assert (summary["version"], summary["alias"], summary["promoted"]) == ("1", "champion", True)
    assert Path(summary["report"]).read_text().startswith("# Retraining report: tiny-editor v1 -> **champion**")

    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    version = client.get_model_version_by_alias("tiny-editor", "champion")
    base = EditableModel.load(tiny_model_dir)
    assert version.tags["base_model.fingerprint"] == base.targets_fingerprint()
    assert version.tags["dataset.hash"] == summary["dataset"]["dataset_hash"]
    assert version.tags["code.version"] and version.tags["promotion.decision"] == "champion"
    # The champion edits scoped, with the scope the pipeline fitted; the summed editor stays in the store.
    assert version.tags["editor.aggregation"] == "scoped" and summary["scope"]["layer"] == 0
    assert f"* Scope: block {summary['scope']['layer']}, threshold" in Path(summary["report"]).read_text()
    assert summary["training"]["editor_uri"].endswith(summary["scope"]["editor_prefix"])
    capsys.readouterr()
    print_summary(summary, 60.0)  # what `python -m flows` ends with
    printed = capsys.readouterr().out
    assert "retrain-pipeline finished in 1.0 min: tiny-editor v1 -> champion" in printed
    assert "mend_sum: edit_success=" in printed and "scope: block 0, threshold" in printed
    assert "python -m flows.apply_corrections --model-name tiny-editor" in printed
    run = client.get_run(version.run_id)
    for key in ("mend.edit_success", "mend.locality", "ft.edit_success", "ft_l.generalization",
                "curve.mend.k2.edit_success", "curve.ft.k2.locality", "train.steps",
                "mend_sum.locality", "curve.mend_sum.k2.edit_success"):
        assert key in run.data.metrics, key
    assert len(client.get_metric_history(version.run_id, "val/loss")) == 2
    plots = {a.path for a in client.list_artifacts(version.run_id, "plots")}
    assert plots == {"plots/training_curves.png", "plots/edit_vs_simultaneous_edits.png"}
    png = Path(client.download_artifacts(version.run_id, "plots/training_curves.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The registered pyfunc edits exactly like the editor the pipeline trained.
    mlflow.set_tracking_uri(summary["tracking_uri"])
    served = mlflow.pyfunc.load_model("models:/tiny-editor@champion")
    request = pd.DataFrame({"prompt": ["The capital of France is", "Who wrote Hamlet?"],
                            "target": ["Rome", None], "query": ["What is the capital of France?", None]})
    answers = served.predict(request, params={"max_new_tokens": 4})["answer"].tolist()
    editor = Editor.load(Path(summary["training"]["editor_uri"].removeprefix("file://")))
    with editor.edit(base, ["The capital of France is"], ["Rome"]).applied():
        expected = [a.strip() for a in base.generate(["What is the capital of France?", "Who wrote Hamlet?"], 4)]
    assert answers == expected

    assert artifacts_with_key("retrain-report") and artifacts_with_key("evaluation-")
    assert artifacts_with_key("promotion-tiny-editor-v1")

    # Same inputs again: nothing new to register, the champion stays.
    again = retrain_pipeline(cfg)
    assert (again["version"], again["alias"]) == ("1", "champion")
    assert len(client.search_model_versions("name = 'tiny-editor'")) == 1


def test_transient_failures_are_retried_and_bad_input_is_not():
    from prefect import flow, task

    from flows.common import TRANSIENT

    calls = {"io": 0, "bad": 0}

    @task(**{**TRANSIENT, "retry_delay_seconds": 0})
    def flaky_io() -> str:
        calls["io"] += 1
        if calls["io"] < 3:
            raise ConnectionError("503 from the store")
        return "ok"

    @task(**{**TRANSIENT, "retry_delay_seconds": 0})
    def bad_input() -> None:
        calls["bad"] += 1
        raise ValueError("3 of 5 records are malformed")

    @flow
    def both() -> str:
        result = flaky_io()
        bad_input()
        return result

    with pytest.raises(ValueError, match="malformed"):
        both()
    assert calls == {"io": 3, "bad": 1}
