"""``prefect.yaml``: valid for ``prefect deploy``, entrypoints that exist, parameters that fit."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import yaml

from mend.pipeline.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "prefect.yaml").read_text())


def load_entrypoint(entrypoint: str):
    path, name = entrypoint.split(":")
    spec = importlib.util.spec_from_file_location(f"_deploy_{Path(path).stem}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def test_prefect_yaml_validates_with_prefects_own_model():
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(SPEC)
    names = [d.name for d in model.deployments]
    assert {"retrain-nightly", "retrain-weekly-k8s-gpu", "apply-corrections"} <= set(names)
    nightly = next(d for d in model.deployments if d.name == "retrain-nightly")
    assert nightly.schedules and nightly.work_pool.name == "mend-process"


@pytest.mark.parametrize("deployment", SPEC["deployments"], ids=lambda d: d["name"])
def test_deployment_entrypoints_and_parameters(deployment):
    from prefect.client.schemas.schedules import CronSchedule

    for schedule in deployment.get("schedules", []):
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises when invalid
    flow = load_entrypoint(deployment["entrypoint"])
    accepted = set(inspect.signature(flow.fn).parameters)
    assert set(deployment["parameters"]) <= accepted, deployment["parameters"]
    if "config" in deployment["parameters"]:
        params = deployment["parameters"]
        cfg = PipelineConfig.from_yaml(ROOT / params["config"], params.get("overrides") or {})
        assert cfg.model == "smollm2-135m"


def test_compose_file_wires_the_services_the_flows_need():
    compose = yaml.safe_load((ROOT / "infra" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"minio", "minio-init", "postgres", "mlflow", "prefect-server", "deploy", "prefect-worker"} <= set(services)
    assert "postgresql://" in services["mlflow"]["command"] and "--artifacts-destination s3://" in services["mlflow"]["command"]
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    env = services["prefect-worker"]["environment"]
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MEND_STORE", "AWS_ENDPOINT_URL_S3",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert name in env, name
    assert (ROOT / "infra" / "postgres" / "init-databases.sh").exists()


def test_gpu_work_pool_template_defines_every_job_variable_the_deployment_sets():
    import json

    template = json.loads((ROOT / "infra" / "k8s" / "base-job-template.json").read_text())
    variables = set(template["variables"]["properties"])
    gpu = next(d for d in SPEC["deployments"] if d["name"] == "retrain-weekly-k8s-gpu")
    assert set(gpu["work_pool"]["job_variables"]) <= variables
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
