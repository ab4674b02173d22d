"""The README's corrections section followed literally (issue 19, item 1 and its acceptance test):

    export MEND_STORE=<store>
    mend corrections submit fixes.jsonl
    ... the hourly `apply-corrections` deployment (prefect.yaml, process pool) runs ...

The deployment is taken from prefect.yaml as `prefect deploy` fills it (placeholders from
the submitter's environment), and its run gets only the work pool's environment, not the
submitter's shell: the correction must be applied from the store it was submitted to.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from mend import Editor, EditorConfig
from mend.corrections import CorrectionQueue
from mend.models.editable import EditableModel
from mend.serving.pyfunc import log_editor_model
from mend.storage import open_store
from tests.flows.fixtures import prefect_server, tiny_model_dir  # noqa: F401  (configures Prefect first)
from tests.support.corrections import LENIENT, correction_dicts
from tests.support.synthetic import synthetic_records

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _deployment(name: str) -> dict:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return next(d for d in spec["deployments"] if d["name"] == name)


def _register_champion(tmp_path: Path, model_dir: Path, name: str, tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    experiment = client.create_experiment("editors", artifact_location=(tmp_path / "mlartifacts").as_uri())
    model = EditableModel.load(model_dir)
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=5e-2))
    records = synthetic_records(8, seed=99)
    editor.fit_normalization(model, [r.prompt for r in records], [r.target for r in records])
    editor.save(tmp_path / "editor")
    with mlflow.start_run(experiment_id=experiment):
        log_editor_model(tmp_path / "editor", base_model=str(model_dir), registered_model_name=name)
    client.set_registered_model_alias(name, "champion", "1")
    mlflow.set_tracking_uri(None)


def test_submit_with_mend_store_then_the_deployed_flow_applies_it(tmp_path, monkeypatch, tiny_model_dir,  # noqa: F811
                                                                   prefect_server):  # noqa: F811
    from prefect.utilities.templating import apply_values

    from mend.cli import app

    deployment = _deployment("apply-corrections")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _register_champion(tmp_path, tiny_model_dir, deployment["parameters"]["model_name"], tracking)
    work = tmp_path / "checkout"  # where the worker runs the flow (never the repository: no ./artifacts there)
    work.mkdir()
    monkeypatch.chdir(work)
    for name in ("MEND_STORE", "MEND_STORAGE_URI"):
        monkeypatch.delenv(name, raising=False)

    # export MEND_STORE=...; mend corrections submit fixes.jsonl
    store = tmp_path / "team-store"
    monkeypatch.setenv("MEND_STORE", str(store))
    [fix] = correction_dicts(1)
    (work / "fixes.jsonl").write_text(json.dumps(fix) + "\n")
    result = CliRunner().invoke(app, ["corrections", "submit", "fixes.jsonl"])
    assert result.exit_code == 0, result.output

    # prefect deploy (same shell), then the process worker starts the run with the pool's environment
    job_env = apply_values(deployment["work_pool"]["job_variables"].get("env", {}), dict(os.environ), remove_notset=False)
    monkeypatch.delenv("MEND_STORE")
    for name, value in job_env.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)

    params = dict(deployment["parameters"])
    params["config"] = str(ROOT / params["config"])
    # A random tiny model passes only a lenient acceptance policy; everything else is as deployed.
    params["apply"] = {**params["apply"], "batch_size": 2, "policy": LENIENT.model_dump()}
    path, name = deployment["entrypoint"].split(":")
    spec = importlib.util.spec_from_file_location("_deployed_apply_corrections", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = getattr(module, name)(**params)

    assert report["applied"] == [fix["id"]], report
    assert CorrectionQueue(open_store(store)).ids("applied") == [fix["id"]]
    assert not (work / "artifacts").exists()


def test_the_deployments_and_infra_name_the_store_mend_store_only():
    for deployment in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]:
        env = deployment["work_pool"]["job_variables"].get("env", {})
        assert "MEND_STORE" in env and "MEND_STORAGE_URI" not in env, deployment["name"]
    for path in [ROOT / "prefect.yaml", *(ROOT / "infra").rglob("*")]:
        if path.is_file() and path.suffix in (".yaml", ".yml", ".json", ""):
            assert "MEND_STORAGE_URI" not in path.read_text(errors="replace"), path
