"""Flow ``apply-corrections``: apply the queued corrections with the champion editor,
publish corrected-model versions and register them in MLflow.

    python -m flows.apply_corrections --model-name mend-editor-smollm2-135m [--alias champion]
    prefect deployment run apply-corrections/apply-corrections          # scheduled (prefect.yaml)

Steps: fetch the editor behind ``models:/<model_name>@<alias>``; load the base model it
was trained on (refused if its weights differ); run :func:`mend.corrections.apply_pending`
on the queue at ``<storage.uri>/<queue_prefix>`` (validate, edit in batches, score,
accept or reject, publish manifest-last under a lease); then register every published
version not yet in MLflow as ``mend-corrected-<model>`` (alias ``current``), with
lineage to the editor version and the base model; last, task ``queue-status`` reads the
queue's status (:mod:`mend.corrections.status`), which ends the run's artifact: how many
reported corrections are live, what became of the others, and what else the live ones
moved.

Safe to re-run at any time: published corrections are never applied twice, a run
killed mid-batch leaves the previous version, and registration catches up on versions
a killed run published but did not register.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.common import (
    TRANSIENT,
    ConfigArg,
    load_config,
    logger,
    markdown,
    store_for,
    table,
)


@task(name="apply-queue")
def apply_queue(config: dict[str, Any], model_name: str, alias: str, queue_prefix: str,
                apply: dict[str, Any]) -> dict[str, Any]:
    """Apply every pending correction with the editor behind the alias; returns the report."""
    from mend.corrections import ApplyConfig, CorrectionQueue, apply_pending
    from mend.editor.editor import Editor
    from mend.models.editable import EditableModel
    from mend.registry import mlflow_registry as reg
    from mend.registry.corrected import download_editor

    cfg = load_config(config)
    client = reg.connect(cfg.mlflow.tracking_uri, cfg.mlflow.registry_uri)
    log = logger()
    with tempfile.TemporaryDirectory() as tmp:
        ref = download_editor(client, model_name, alias, tmp)
        log.info("editor %s v%s (%s); base model %s", model_name, ref.version, alias, ref.base_model)
        editor = Editor.load(ref.directory).eval()
        model = EditableModel.load(ref.base_model, dtype=ref.dtype, patterns=editor.config.patterns)
        editor.check_model(model, strict=True)
        queue = CorrectionQueue(store_for(cfg.storage.uri), queue_prefix)
        report = apply_pending(queue, model, editor, ApplyConfig.model_validate(apply),
                               details={"editor": ref.lineage()}, log=log.info)
    return {
        "editor_version": ref.version, "base_model": ref.base_model, "dtype": ref.dtype,
        "versions": report.versions, "applied": report.applied,
        "rejected": [list(r) for r in report.rejected], "dead_lettered": [list(d) for d in report.dead_lettered],
        "recovered": report.recovered, "seconds": round(report.seconds, 2), "counts": queue.counts(),
    }


@task(name="register-corrected-versions", **TRANSIENT)
def register_versions(config: dict[str, Any], model_name: str, queue_prefix: str, base_model: str,
                      dtype: str) -> dict[str, str]:
    """Register every published, unregistered queue version; returns queue -> MLflow version."""
    from mend.corrections import VersionStore
    from mend.registry import mlflow_registry as reg
    from mend.registry.corrected import corrected_model_name, sync_corrected_versions

    cfg = load_config(config)
    store = store_for(cfg.storage.uri)
    done = sync_corrected_versions(
        reg.connect(cfg.mlflow.tracking_uri, cfg.mlflow.registry_uri), VersionStore(store, queue_prefix),
        name=corrected_model_name(model_name), store_id=f"{cfg.storage.uri.rstrip('/')}/{queue_prefix}",
        experiment=f"{cfg.mlflow.experiment}-corrections", base_model=base_model, dtype=dtype,
        base_model_dir=base_model if Path(base_model).is_dir() and cfg.mlflow.include_base_model else None,
        max_new_tokens=cfg.mlflow.max_new_tokens,
    )
    return {str(k): v for k, v in done.items()}


@task(name="queue-status", **TRANSIENT)
def report_status(config: dict[str, Any], queue_prefix: str) -> dict[str, Any]:
    """Where the queue's corrections stand after the run (:mod:`mend.corrections.status`)."""
    from mend.corrections import CorrectionQueue, queue_status

    status = queue_status(CorrectionQueue(store_for(load_config(config).storage.uri), queue_prefix))
    return {"status": status.as_json(), "status_lines": status.lines()}


@flow(name="apply-corrections")
def apply_corrections(
    model_name: str = "mend-editor-smollm2-135m",
    alias: str = "champion",
    queue_prefix: str = "corrections",
    apply: dict[str, Any] | None = None,
    config: ConfigArg = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply pending corrections with ``models:/<model_name>@<alias>`` and publish them.

    ``apply`` holds :class:`mend.corrections.ApplyConfig` fields (``batch_size``,
    ``policy``, ``regression_probes``, ...); ``config``/``overrides`` the pipeline
    configuration that names the artifact store and MLflow.
    """
    cfg = load_config(config, overrides)
    report = apply_queue(cfg.to_dict(), model_name, alias, queue_prefix, apply or {})
    registered = register_versions(cfg.to_dict(), model_name, queue_prefix, report["base_model"], report["dtype"])
    report = {**report, **report_status(cfg.to_dict(), queue_prefix)}
    from mend.registry.corrected import corrected_model_name

    corrected = corrected_model_name(model_name)
    log = logger()
    log.info("published %s: %d applied, %d rejected, %d dead-lettered", report["versions"],
             len(report["applied"]), len(report["rejected"]), len(report["dead_lettered"]))
    rows = [{"correction": cid, "outcome": "rejected", "reason": why} for cid, why in report["rejected"]]
    rows += [{"correction": cid, "outcome": "dead-letter", "reason": why} for cid, why in report["dead_lettered"]]
    if rows:
        table(f"corrections-refused-{corrected}", rows, "corrections refused by this run, with reasons")
    markdown(
        f"corrections-{corrected}",
        "\n".join([
            f"# Corrections applied with `{model_name}` v{report['editor_version']} ({alias})",
            f"Published queue versions {report['versions'] or 'none'}; "
            f"registered as `{corrected}` (alias `current` -> v{registered[max(registered, key=int)]})"
            if registered else "Nothing published yet.",
            "",
            "## Status of the queue",
            "```text",
            *report["status_lines"],
            "```",
        ]),
        description="apply-corrections run",
    )
    return {**report, "corrected_model": corrected, "registered": registered}


if __name__ == "__main__":
    from flows.cli import run_single

    run_single(apply_corrections, needs=("model_name",))
