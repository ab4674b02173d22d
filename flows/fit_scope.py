"""Flow ``fit-scope``: give the meta-trained editor a scope model, so it edits scoped.

    python -m flows.fit_scope --manifest M.json --training T.json [--set scope.layers=[4,8]]

The scope is fitted on the train split (rephrases in scope, locality prompts out), its
block and threshold chosen on the val split; the scoped editor goes to the store beside
the trained one (:mod:`mend.pipeline.scoping`) and is what evaluation, registration and
the corrections queue use from then on. With ``scope.enabled: false`` the training
result passes through unchanged and the editor stays summed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.common import (
    PERSIST,
    TRANSIENT,
    ConfigArg,
    fetch_editor,
    load_config,
    logger,
    markdown,
    md_table,
    store_for,
)
from mend.pipeline import data as pdata
from mend.pipeline import scoping
from mend.pipeline.training import load_trained


@task(name="find-finished-scope", **TRANSIENT)
def find_scoped(config: dict[str, Any], store_uri: str, run_id: str, editor_prefix: str) -> dict[str, Any]:
    """Where this editor fitted with these settings goes, and its record if it is there."""
    store = store_for(store_uri)
    prefix = scoping.scoped_prefix(store, run_id, editor_prefix, load_config(config).scope)
    return {"prefix": prefix, "record": scoping.finished_scope(store, prefix)}


@task(name="fit-scope-model", **PERSIST)
def fit_scope_model(config: dict[str, Any], manifest: dict[str, Any], editor_dir: str, out_dir: str,
                    prefix: str) -> dict[str, Any]:
    """Fit, attach, save the scoped editor to ``out_dir`` and publish it under ``prefix``
    (which names the editor's weights, so a persisted result never stands for another)."""
    cfg = load_config(config)
    store = store_for(manifest["store_uri"])
    train = pdata.load_split(store, manifest, "train")
    val = pdata.load_split(store, manifest, "val")
    editor, model = load_trained(cfg, editor_dir)
    logger().info("fitting a scope on %d train records, choosing among blocks %s on %d val records",
                  len(train), cfg.scope.layers, len(val))
    report = scoping.fit_scoped_editor(model, editor, train, val, cfg.scope)
    editor.save(out_dir, extra=editor.metadata)
    return scoping.publish_scoped(store, prefix, Path(out_dir), report)


@flow(name="fit-scope")
def fit_scope(manifest: dict[str, Any], training: dict[str, Any], config: ConfigArg = None,
              overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``training`` (from train-editor) pointing at the scoped editor, with the fit's
    record under ``scope`` (the summed editor stays under ``summed_editor_uri``)."""
    cfg = load_config(config, overrides)
    if not cfg.scope.enabled:
        return training
    run_id = training["run_id"]
    found = find_scoped(cfg.to_dict(), training["store_uri"], run_id, training["editor_prefix"])
    record = found["record"]
    if record is not None:
        logger().info("%s already has a scope fitted with these settings: %s", run_id, record["editor_uri"])
    else:
        out_dir = Path(cfg.work_dir) / "scope" / run_id
        editor_dir = fetch_editor(training["store_uri"], training["editor_prefix"], str(out_dir / "summed"))
        record = fit_scope_model(cfg.to_dict(), manifest, editor_dir, str(out_dir / "scoped"), found["prefix"])
    chosen = record["layer_choice"][str(record["layer"])]
    logger().info("scope at block %d: threshold %.3f, val recall %.3f, false positives %s", record["layer"],
                  record["threshold"], chosen["recall"], chosen["false_positives"])
    markdown(
        f"scope-{run_id}",
        "\n".join([
            f"# Scope of `{run_id}`",
            f"Fitted on {record['n_train']} train records in {record['seconds']:.0f} s; block {record['layer']} kept "
            f"(threshold {record['threshold']:.3f}) among the candidates below, measured on {record['n_val']} val records.",
            "",
            md_table([{"block": layer, **q} for layer, q in record["layer_choice"].items()],
                     ["block", "recall", "top1", "false_positives", "threshold"]),
            "",
            f"Scoped editor: `{record['editor_uri']}`",
        ]),
        description="scope model",
    )
    return {**training, "editor_prefix": record["editor_prefix"], "editor_uri": record["editor_uri"],
            "summed_editor_uri": training["editor_uri"], "scope": record}


if __name__ == "__main__":
    from flows.cli import run_single

    run_single(fit_scope, needs=("manifest", "training"))
