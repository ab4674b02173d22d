"""Flow ``register``: log the candidate to MLflow and register it as a pyfunc model version.

    python -m flows.register --manifest M.json --training T.json --evaluation E.json

One MLflow run per candidate: params (training, data and gate settings), metrics
(validation history per step, the evaluation tables and the multi-edit curve), the
PNG plots and evaluation files, and the editor as a ``pyfunc`` model (it loads the
base model and applies edits; signature and input example included), registered under
``mend-editor-<model>`` and tagged with the base-model fingerprint, dataset hash and
code version. Registering the same editor again returns the existing version.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.common import PERSIST, TRANSIENT, ConfigArg, load_config, logger, markdown, md_table
from mend.editor.editor import SCOPE_DIR
from mend.storage import sha256_file


def _base_model_dir(model: str) -> Path | None:
    """The base model's files when they are a folder (``mlflow.include_base_model``)."""
    path = Path(model)
    if path.is_dir():
        return path
    from mend.models.loading import PACKAGED_MODELS, _gguf_as_safetensors, packaged_gguf

    if model in PACKAGED_MODELS or path.suffix == ".gguf":
        return _gguf_as_safetensors(packaged_gguf(model) if model in PACKAGED_MODELS else path, "causal")
    return None


def _editor_sha(editor_dir: Path) -> str:
    """sha256 of the editor's weights, combined with its scope model's files when it has
    one: the same weights with a scope are another version (they edit otherwise)."""
    weights = sha256_file(editor_dir / "editor.safetensors")
    scope = sorted((editor_dir / SCOPE_DIR).glob("scope.*"))
    if not scope:
        return weights
    return hashlib.sha256(" ".join([weights, *(sha256_file(p) for p in scope)]).encode()).hexdigest()


@task(name="log-to-mlflow", **TRANSIENT, **PERSIST)
def log_to_mlflow(config: dict[str, Any], manifest: dict[str, Any], training: dict[str, Any],
                  evaluation: dict[str, Any]) -> dict[str, Any]:
    from mend.registry import mlflow_registry as reg

    cfg = load_config(config)
    editor_dir = Path(evaluation["editor_dir"])
    editor_sha = _editor_sha(editor_dir)
    client = reg.connect(cfg.mlflow.tracking_uri, cfg.mlflow.registry_uri)
    # Idempotent: a retry (or a re-run that produced the very same editor) finds its version.
    try:
        existing = client.search_model_versions(
            f"name = '{cfg.model_name}' and tags.`editor.sha256` = '{editor_sha}'")
    except Exception:  # noqa: BLE001 - no such registered model yet
        existing = []
    if existing:
        mv = existing[0]
        logger().info("editor %s is already registered as %s v%s", editor_sha[:12], cfg.model_name, mv.version)
        return {"model_name": cfg.model_name, "version": str(mv.version), "run_id": mv.run_id,
                "model_uri": f"models:/{cfg.model_name}/{mv.version}", "tracking_uri": reg.tracking_uri(cfg.mlflow.tracking_uri), "tags": dict(mv.tags), "reused": True}
    files = [Path(p) for p in evaluation["files"].values()]
    base_dir = _base_model_dir(cfg.model) if cfg.mlflow.include_base_model else None
    info = reg.log_candidate(
        client, model_name=cfg.model_name, experiment=cfg.mlflow.experiment, base_model=cfg.model,
        dtype=cfg.dtype, params=cfg.run_params(), gate_method=cfg.promotion.method,
        gate_metrics=list(cfg.promotion.metrics), max_new_tokens=cfg.mlflow.max_new_tokens,
        editor_dir=editor_dir, manifest=manifest, training=training, evaluation=evaluation,
        artifact_files=files, base_model_dir=base_dir, run_name=training["run_id"],
        version_tags={"editor.sha256": editor_sha, "editor.uri": training.get("editor_uri", "")},
    )
    return {**info, "reused": False}


@flow(name="register")
def register(manifest: dict[str, Any], training: dict[str, Any], evaluation: dict[str, Any],
             config: ConfigArg = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Log the run and register the editor; returns the model name, version and URI."""
    cfg = load_config(config, overrides)
    info = log_to_mlflow(cfg.to_dict(), manifest, training, evaluation)
    logger().info("registered %s version %s (run %s) in %s", info["model_name"], info["version"],
                  info["run_id"], info["tracking_uri"])
    markdown(
        f"registered-{info['model_name']}-v{info['version']}",
        "\n".join([
            f"# Registered `{info['model_name']}` version {info['version']}",
            f"Model URI: `{info['model_uri']}` — MLflow run `{info['run_id']}` at `{info['tracking_uri']}`",
            "",
            md_table([{"tag": k, "value": v} for k, v in sorted(info["tags"].items())]),
        ]),
        description="model registry entry",
    )
    return info


if __name__ == "__main__":
    from flows.cli import run_single

    run_single(register, needs=("manifest", "training", "evaluation"))
