"""The S3 path: artifact store on a real S3-compatible server (moto on 127.0.0.1), a real
``mlflow server`` whose artifact root is on that server, and faults on the way."""

from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from mend.editor.editor import Editor
from mend.models.editable import EditableModel
from mend.storage import S3Store
from tests.flows.helpers import tiny_config
from tests.registry.mlflow_server import mlflow_server
from tests.support.flaky_proxy import FlakyProxy

pytestmark = pytest.mark.usefixtures("prefect_server")


def bucket_objects(moto_s3, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix``, read directly from the server (not through the store)."""
    client = moto_s3.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            out[entry["Key"]] = client.get_object(Bucket=bucket, Key=entry["Key"])
    return out


@pytest.mark.slow
def test_pipeline_on_s3_with_an_mlflow_server_and_the_editor_downloaded_back(
    tmp_path, moto_s3, s3_bucket, tiny_model_dir, tiny_data, monkeypatch
):
    from flows.retrain_pipeline import retrain_pipeline

    # The input data is an S3 object too (uploaded by another tool: no sha256 metadata).
    moto_s3.client().put_object(Bucket=s3_bucket, Key="incoming/edits.json", Body=tiny_data.read_bytes())
    server_env = {"MLFLOW_S3_ENDPOINT_URL": moto_s3.endpoint_url, **moto_s3.env()}
    with mlflow_server(tmp_path / "mlflow-server", f"s3://{s3_bucket}/mlflow", server_env) as url:
        cfg = tiny_config(tmp_path, tiny_model_dir, [f"s3://{s3_bucket}/incoming/edits.json"],
                          store=f"s3://{s3_bucket}/pipeline", tracking_uri=url)
        summary = retrain_pipeline(cfg)
        assert (summary["alias"], summary["version"]) == ("champion", "1")
        assert summary["dataset"]["store_uri"] == f"s3://{s3_bucket}/pipeline"

        # Everything the pipeline stored is on the S3 server, checksums intact.
        stored = bucket_objects(moto_s3, s3_bucket, "pipeline/")
        assert any(k.endswith("/manifest.json") for k in stored)
        for key, response in stored.items():
            body = response["Body"].read()
            assert response["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest(), key
        # MLflow's artifacts (plots, the pyfunc model with the editor) went to the bucket via the server.
        logged = bucket_objects(moto_s3, s3_bucket, "mlflow/")
        assert any(k.endswith("editor/editor.safetensors") for k in logged)
        assert any(k.endswith("plots/edit_vs_simultaneous_edits.png") for k in logged)

        # Download the registered editor back through the server and edit with it.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        version = MlflowClient(url).get_model_version_by_alias("tiny-editor", "champion")
        assert version.tags["dataset.hash"] == summary["dataset"]["dataset_hash"]
        local = mlflow.artifacts.download_artifacts(f"models:/tiny-editor/{version.version}", dst_path=str(tmp_path / "dl"))
        served = mlflow.pyfunc.load_model(local)
        request = pd.DataFrame({"prompt": ["The capital of France is", "Water boils at"],
                                "target": ["Rome", "100 degrees"]})
        answers = served.predict(request, params={"max_new_tokens": 5})["answer"].tolist()

    # The same editor, read from the artifact store on S3 (scoped, as the pipeline registers it), edits identically.
    store = S3Store(s3_bucket, "pipeline")
    editor_dir = tmp_path / "from-store"
    assert summary["scope"]["editor_prefix"].startswith(f"editors/{summary['training']['run_id']}/scoped-")
    store.download_dir(summary["scope"]["editor_prefix"], editor_dir)
    downloaded = next(Path(local).rglob("editor.safetensors"))
    assert downloaded.read_bytes() == (editor_dir / "editor.safetensors").read_bytes()
    base = EditableModel.load(tiny_model_dir)
    with Editor.load(editor_dir).edit(base, list(request["prompt"]), list(request["target"])).applied():
        expected = [a.strip() for a in base.generate(list(request["prompt"]), 5)]
    assert answers == expected


def test_flows_complete_through_s3_faults_and_the_objects_verify(
    tmp_path, moto_s3, s3_bucket, tiny_model_dir, tiny_data, monkeypatch
):
    from flows.prepare_data import prepare_data
    from flows.train_editor import train_editor

    with FlakyProxy(moto_s3.endpoint_url, failure_rate=0.2, seed=7) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint_url)  # every store request goes through it
        cfg = tiny_config(tmp_path, tiny_model_dir, [str(tiny_data)], store=f"s3://{s3_bucket}/faulty")
        manifest = prepare_data(cfg)
        training = train_editor(manifest, cfg, overrides={"train.max_steps": 10})
        assert training["steps"] == 10
        # A second preparation reads the manifest back through the faults too.
        assert prepare_data(cfg, overrides={"storage.uri": f"s3://{s3_bucket}/faulty"})["input_hash"] == manifest["input_hash"]
    assert proxy.stats.failed_before > 5, proxy.stats

    stored = bucket_objects(moto_s3, s3_bucket, "faulty/")
    assert any(k.endswith("best/editor.safetensors") for k in stored)
    assert any(k.endswith("/last/optimizer.safetensors") for k in stored)
    assert any(k.endswith("checkpoints/latest.json") for k in stored)
    for key, response in stored.items():
        body = response["Body"].read()
        assert response["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest(), key
