"""The apply-corrections flow: champion editor from the registry, queue to published and
registered corrected model, idempotent re-runs, rollbacks registered, served over HTTP."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from flows.apply_corrections import apply_corrections as apply_flow
from mend import Editor, EditorConfig
from mend.corrections import CorrectionQueue, VersionStore, rollback
from mend.models.editable import EditableModel
from mend.scope import ScopeConfig, ScopeModel
from mend.serving.pyfunc import log_editor_model
from mend.storage import open_store
from tests.registry.mlflow_server import free_port, http_process
from tests.support.corrections import LENIENT, correction_dicts
from tests.support.synthetic import synthetic_records

EDITOR_NAME = "mend-editor-tiny"
CORRECTED = "mend-corrected-tiny"
QUESTIONS = ["Who wrote Hamlet?", "The capital of France is", "Water boils at"]


@pytest.fixture
def deployment(request, tmp_path, tiny_model_dir, prefect_server):
    """A registry whose champion is an (identity) editor for the tiny model, and an empty
    queue; ``request.param`` (indirect parametrisation) picks the editor's aggregation."""
    aggregation = getattr(request, "param", "sum")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    experiment = client.create_experiment("editors", artifact_location=(tmp_path / "mlartifacts").as_uri())
    model = EditableModel.load(tiny_model_dir)
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=5e-2, aggregation=aggregation))
    records = synthetic_records(8, seed=99)
    editor.fit_normalization(model, [r.prompt for r in records], [r.target for r in records])
    if aggregation == "scoped":
        # Block 0 (the tiny LLaMA edits blocks 1-3); only a correction's own prompt reaches
        # the threshold, so every other prompt must be answered by the base model.
        torch.manual_seed(0)
        editor.scope = ScopeModel(ScopeConfig(layer=0, dim=16, threshold=0.999), model.model.config.hidden_size)
    editor.save(tmp_path / "editor")
    with mlflow.start_run(experiment_id=experiment):
        log_editor_model(tmp_path / "editor", base_model=str(tiny_model_dir), registered_model_name=EDITOR_NAME)
    client.set_registered_model_alias(EDITOR_NAME, "champion", "1")
    mlflow.set_tracking_uri(None)
    config = {"model": str(tiny_model_dir), "storage": {"uri": str(tmp_path / "store")},
              "mlflow": {"tracking_uri": uri, "experiment": "tests"}}
    yield config, client, CorrectionQueue(open_store(tmp_path / "store")), model
    mlflow.set_tracking_uri(None)


def run_flow(config, **apply):
    return apply_flow(model_name=EDITOR_NAME, alias="champion", config=config,
                      apply={"batch_size": 2, "policy": LENIENT.model_dump(), **apply})


@pytest.mark.parametrize("deployment", ["sum", "least_squares", "scoped"], indirect=True)
def test_flow_publishes_registers_and_serves_the_corrections(deployment, request):
    config, client, queue, model = deployment
    aggregation = request.node.callspec.params["deployment"]
    items = correction_dicts(4)
    queue.submit([*items, {"id": "broken", "prompt": "", "target": "x"}])

    least_squares = {"regulariser_scale": 2.0, "passes": 2}
    result = run_flow(config, **(least_squares if aggregation == "least_squares" else {}))

    assert sorted(result["applied"]) == sorted(i["id"] for i in items)
    assert result["versions"] == [1, 2] and result["registered"] == {"1": "1", "2": "2"}
    assert result["counts"] == {"pending": 0, "applied": 4, "rejected": 0, "dead-letter": 1}
    assert result["status"]["live"] == 4 and result["status"]["reported"] == 5
    assert result["status_lines"][0] == "5 corrections reported; 4 live in version 2"
    current = client.get_model_version_by_alias(CORRECTED, "current")
    assert str(current.version) == "2"
    tags = current.tags
    assert tags["editor.model_name"] == EDITOR_NAME and tags["editor.version"] == "1"
    assert tags["editor.alias"] == "champion"
    assert tags["base_model.fingerprint"] == model.targets_fingerprint()
    assert tags["corrections.version"] == "2" and tags["corrections.kind"] == "apply"
    # The champion's aggregation is the one the flow used (least squares: one re-solve).
    published = VersionStore(queue.store).manifest(2)["aggregation"]
    assert tags["corrections.aggregation"] == published == aggregation
    assert tags.get("corrections.regulariser_scale") == ("2.0" if aggregation == "least_squares" else None)
    assert tags["corrections.passes"] == ("2" if aggregation == "least_squares" else "1")
    manifest = mlflow.artifacts.load_dict(f"runs:/{current.run_id}/manifest.json")
    assert sorted(manifest["active_ids"]) == sorted(i["id"] for i in items)

    # The registered model answers as the base model with the published edit applied.
    mlflow.set_tracking_uri(config["mlflow"]["tracking_uri"])
    served = mlflow.pyfunc.load_model(f"models:/{CORRECTED}@current")
    prompts = [i["prompt"] for i in items] + QUESTIONS
    got = served.predict(pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 3})["answer"].tolist()
    versions = VersionStore(queue.store)
    with versions.load_edit(versions.active(2)).applied(model):
        expected = [a.strip() for a in model.generate(prompts, 3)]
    assert got == expected
    base_answers = [a.strip() for a in model.generate(prompts, 3)]
    assert got != base_answers  # the corrections changed something
    if aggregation == "scoped":  # out of every correction's scope: exactly the base model
        assert got[len(items):] == base_answers[len(items):]
    # The registry holds the solved change; the store keeps what re-solving needs.
    logged = Path(mlflow.artifacts.download_artifacts(f"models:/{CORRECTED}@current"))
    (edit_json,) = logged.rglob("edit.json")
    saved = json.loads(edit_json.read_text())
    assert saved["aggregation"] == aggregation and saved["solved"] == (aggregation == "least_squares")


def test_rerun_is_a_no_op_and_rollbacks_are_registered_with_lineage(deployment):
    config, client, queue, model = deployment
    queue.submit(correction_dicts(3))
    first = run_flow(config)
    assert first["registered"] == {"1": "1", "2": "2"}

    again = run_flow(config)
    assert again["versions"] == [] and again["applied"] == []
    assert again["registered"] == first["registered"]
    assert len(client.search_model_versions(f"name = '{CORRECTED}'")) == 2

    # A rollback published from the CLI/API is registered by the next run.
    dropped = first["applied"][0]
    assert rollback(queue, correction_ids=[dropped], reason="source was wrong") == 3
    third = run_flow(config)
    assert third["registered"]["3"] == "3"
    rolled = client.get_model_version_by_alias(CORRECTED, "current")
    assert str(rolled.version) == "3"
    assert rolled.tags["corrections.kind"] == "rollback" and rolled.tags["editor.version"] == "1"
    assert rolled.tags["corrections.active"] == "2" and rolled.tags["corrections.aggregation"] == "sum"
    assert "source was wrong" in rolled.description


def test_missing_alias_is_a_clear_error(deployment):
    config, _, queue, _ = deployment
    queue.submit(correction_dicts(1))
    with pytest.raises(LookupError, match="no version with alias 'production'"):
        apply_flow(model_name=EDITOR_NAME, alias="production", config=config)
    assert queue.counts()["pending"] == 1  # nothing consumed


@pytest.mark.slow
@pytest.mark.parametrize("deployment", ["sum", "scoped"], indirect=True)
def test_mlflow_models_serve_answers_over_http(deployment, tmp_path, request):
    config, _, queue, model = deployment
    items = correction_dicts(2)
    queue.submit(items)
    run_flow(config)
    prompts = [items[0]["prompt"], *QUESTIONS]  # one in a correction's scope, the rest in none
    port = free_port()
    # mlflow runs `uvicorn` by name: the environment's bin folder must be on PATH.
    env = {"MLFLOW_TRACKING_URI": config["mlflow"]["tracking_uri"],
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{CORRECTED}@current",
            "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with http_process(argv, tmp_path, f"{url}/ping", env, timeout=180, log_name="serve.log"):
        body = json.dumps({"dataframe_split": {"columns": ["prompt"], "data": [[q] for q in prompts]},
                           "params": {"max_new_tokens": 3}}).encode()
        call = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(call, timeout=60) as response:
            answers = [row["answer"] for row in json.loads(response.read())["predictions"]]
    base = [a.strip() for a in model.generate(prompts, 3)]
    versions = VersionStore(queue.store)
    with versions.load_edit(versions.active(versions.latest())).applied(model):
        assert answers == [a.strip() for a in model.generate(prompts, 3)]
    if request.node.callspec.params["deployment"] == "scoped":
        assert answers[1:] == base[1:]  # routed: the other prompts get the base model
