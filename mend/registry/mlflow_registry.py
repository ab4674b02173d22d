"""Register editors in MLflow and move the ``champion`` / ``challenger`` aliases.

One registered model per base model (``mend-editor-<model>`` by default). Every
version carries tags a team filters on::

    base_model.weights_fingerprint   base_model.fingerprint (target set too: older records)
    base_model.name         base_model.source    editor.aggregation
    dataset.hash            dataset.input_hash   code.version   train.config_hash
    promotion.decision      promotion.reason     promotion.compared_to   (set by promote)

Metrics live on the version's run (``mend.edit_success``, ``ft_l.locality``,
``curve.mend.k8.edit_success``, ``val/edit_acc`` per step, ...); the gate reads the
candidate's and the champion's from there.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

import mend

CHAMPION, CHALLENGER = "champion", "challenger"


class Verdict(Protocol):
    """A promotion decision as the registry records it (``mend.pipeline.promotion.Decision``)."""

    promote: bool
    reason: str
    checks: list[dict]
    champion_version: str | None

    @property
    def alias(self) -> str: ...


def tracking_uri(configured: str | None = None) -> str:
    """``configured``, else ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db`` (absolute)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{Path('mlflow.db').resolve()}"
    elif uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def connect(tracking: str | None = None, registry: str | None = None) -> MlflowClient:
    """A client for the tracking server (see :func:`tracking_uri`) and model registry."""
    uri = tracking_uri(tracking)
    mlflow.set_tracking_uri(uri)
    if registry:
        mlflow.set_registry_uri(registry)
    return MlflowClient(tracking_uri=uri, registry_uri=registry)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it (local stores: artifacts beside ``mlflow.db``)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    uri = client.tracking_uri
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently
        return client.get_experiment_by_name(name).experiment_id


def code_version() -> str:
    """``$MEND_CODE_VERSION``, else the git commit (``-dirty`` with local changes), else the package version."""
    if os.environ.get("MEND_CODE_VERSION"):
        return os.environ["MEND_CODE_VERSION"]
    root = Path(mend.__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"git:{sha}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"mend-ops=={mend.__version__}"


def evaluation_metrics(evaluation: dict[str, Any]) -> dict[str, float]:
    """``<method>.<metric>`` for the single-edit tables, ``curve.<method>.k<k>.<metric>``."""
    metrics: dict[str, float] = {}
    for method, summary in evaluation["tables"].items():
        for key, value in summary.items():
            if isinstance(value, int | float) and value is not None:
                metrics[f"{method}.{key}"] = float(value)
    for row in evaluation["curve"]:
        for key in ("edit_success", "generalization", "locality"):
            if row.get(key) is not None:
                metrics[f"curve.{row['method']}.k{row['k']}.{key}"] = float(row[key])
    return metrics


def log_candidate(
    client: MlflowClient,
    *,
    model_name: str,
    experiment: str,
    base_model: str,
    dtype: str,
    params: dict[str, Any],
    gate_method: str,
    gate_metrics: Iterable[str],
    max_new_tokens: int,
    editor_dir: Path,
    manifest: dict[str, Any],
    training: dict[str, Any],
    evaluation: dict[str, Any],
    artifact_files: Iterable[Path],
    base_model_dir: Path | None = None,
    run_name: str | None = None,
    version_tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One MLflow run with params, metrics, plots and the pyfunc editor; registers it as a
    version of ``model_name``, described by the ``gate_method``'s ``gate_metrics``."""
    from mend.serving.pyfunc import log_editor_model

    experiment_id = ensure_experiment(client, experiment)
    editor_meta = json.loads((editor_dir / "editor.json").read_text())
    base = editor_meta.get("base_model", {})
    tags = {
        "base_model.fingerprint": base.get("fingerprint", ""),
        "base_model.weights_fingerprint": base.get("weights_fingerprint", ""),
        "base_model.name": base.get("name", ""),
        "base_model.source": base_model,
        "dataset.hash": manifest["dataset_hash"],
        "dataset.input_hash": manifest["input_hash"],
        "code.version": code_version(),
        "train.config_hash": training.get("config_hash", ""),
        # sum (MEND) or least_squares (MALMEN): how the apply flow will combine corrections.
        "editor.aggregation": editor_meta.get("config", {}).get("aggregation", "sum"),
    }
    all_tags = {**tags, **(version_tags or {})}
    params = {
        **params,
        "data.counts": json.dumps(manifest["counts"]),
        "eval.n_single": evaluation["n_single"], "eval.n_curve": evaluation["n_curve"],
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        mlflow.log_params({k: v for k, v in params.items() if v is not None})
        for record in training.get("history", []):
            step = int(record["step"])
            mlflow.log_metrics({k: float(v) for k, v in record.items()
                                if k != "step" and isinstance(v, int | float)}, step=step)
        mlflow.log_metrics({
            "train.steps": float(training["steps"]), "train.minutes": float(training["train_minutes"]),
            **evaluation_metrics(evaluation),
        })
        for path in artifact_files:
            mlflow.log_artifact(str(path), artifact_path="evaluation" if path.suffix != ".png" else "plots")
        mlflow.log_dict(manifest, "data/manifest.json")
        info = log_editor_model(
            editor_dir, base_model=base_model, dtype=dtype, base_model_dir=base_model_dir,
            max_new_tokens=max_new_tokens,
            metadata={"dataset_hash": manifest["dataset_hash"], "code_version": tags["code.version"]},
        )
        # Registered with its tags in one call, so a version never exists untagged.
        registered = mlflow.register_model(info.model_uri, model_name, tags=all_tags)
        version = str(registered.version)
        summary = evaluation["tables"].get(gate_method, {})
        client.update_model_version(
            model_name, version,
            description="MEND editor for {model} trained on dataset {data}. {method}: {metrics}".format(
                model=base_model, data=manifest["dataset_hash"][:12], method=gate_method,
                metrics=", ".join(f"{m}={summary[m]:.3f}" for m in gate_metrics if summary.get(m) is not None),
            ),
        )
        return {
            "run_id": run.info.run_id,
            "experiment_id": experiment_id,
            "model_name": model_name,
            "version": version,
            "model_uri": f"models:/{model_name}/{version}",
            "tracking_uri": client.tracking_uri,
            "tags": all_tags,
        }


def get_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def gate_metrics(client: MlflowClient, version: ModelVersion, method: str, names: Iterable[str]) -> dict[str, float]:
    metrics = client.get_run(version.run_id).data.metrics
    return {name: metrics[f"{method}.{name}"] for name in names if f"{method}.{name}" in metrics}


def apply_decision(client: MlflowClient, name: str, version: str, decision: Verdict) -> None:
    """Move the alias and record the decision and its reason on the model version."""
    client.set_registered_model_alias(name, decision.alias, version)
    client.set_model_version_tag(name, version, "promotion.decision", decision.alias)
    client.set_model_version_tag(name, version, "promotion.reason", decision.reason[:5000])
    client.set_model_version_tag(name, version, "promotion.compared_to", decision.champion_version or "none")
    client.set_model_version_tag(name, version, "promotion.checks", json.dumps(decision.checks)[:5000])
    if decision.promote and decision.champion_version and decision.champion_version != version:
        client.set_model_version_tag(name, decision.champion_version, "promotion.superseded_by", version)
    current = client.get_model_version(name, version)
    client.update_model_version(
        name, version, description=f"{current.description or ''}\n\nPromotion: {decision.alias}: {decision.reason}".strip()
    )
