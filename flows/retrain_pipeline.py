"""Flow ``retrain-pipeline``: prepare-data -> train-editor -> fit-scope -> evaluate -> register -> promote.

    python -m flows                       # the main job with configs/pipeline-default.yaml
    python -m flows --data my_edits.json --data s3://bucket/more.jsonl --set train.max_minutes=30

Each step is a flow of its own (a subflow here), usable alone. The run ends with a
markdown report (Prefect artifact and ``<work_dir>/report.md``) and ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow

from flows.common import ConfigArg, load_config, logger, markdown, md_table
from flows.evaluate import evaluate
from flows.fit_scope import fit_scope
from flows.prepare_data import prepare_data
from flows.promote import promote
from flows.register import register
from flows.train_editor import train_editor
from mend.pipeline.evaluation import table_rows


@flow(name="retrain-pipeline")
def retrain_pipeline(config: ConfigArg = None, overrides: dict[str, Any] | None = None,
                     data: list[str] | None = None, resume: bool = True) -> dict[str, Any]:
    """The whole retraining job. ``data`` (paths or s3:// URIs) replaces ``data.sources``."""
    cfg = load_config(config, overrides)
    if data:
        cfg = load_config(cfg.to_dict(), {"data.sources": [{"path": d} for d in data]})
    cfg_dict = cfg.to_dict()
    log = logger()
    log.info("retraining %s on %s (store %s)", cfg.model, [s.path for s in cfg.data.sources], cfg.storage.uri)

    manifest = prepare_data(cfg_dict)
    training = fit_scope(manifest, train_editor(manifest, cfg_dict, resume=resume), cfg_dict)
    evaluation = evaluate(manifest, training, cfg_dict)
    registered = register(manifest, training, evaluation, cfg_dict)
    decision = promote(registered["model_name"], registered["version"], cfg_dict)

    summary = {
        "model": cfg.model,
        "model_name": registered["model_name"],
        "version": registered["version"],
        "model_uri": registered["model_uri"],
        "alias": decision["alias"],
        "promoted": decision["promote"],
        "reason": decision["reason"],
        "champion_version": registered["version"] if decision["promote"] else decision["champion_version"],
        "tracking_uri": registered["tracking_uri"],
        "run_id": registered["run_id"],
        "dataset": {"input_hash": manifest["input_hash"], "dataset_hash": manifest["dataset_hash"],
                    "counts": manifest["counts"], "rejected": manifest["n_rejected"], "store_uri": manifest["store_uri"]},
        "training": {k: training[k] for k in ("run_id", "steps", "stopped", "train_minutes", "best_step",
                                              "best_metric", "resumed_from_step", "editor_uri")},
        "scope": training.get("scope"),
        "evaluation": {"tables": table_rows(evaluation["tables"]), "curve": evaluation["curve"],
                       "n_single": evaluation["n_single"], "files": evaluation["files"]},
        "candidate_metrics": decision["candidate"],
        "champion_metrics": decision["candidate"] if decision["promote"] else decision["champion_metrics"],
    }
    report = render_report(summary)
    out = Path(cfg.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    summary["report"] = str(out / "report.md")
    markdown("retrain-report", report, description=f"{registered['model_name']} v{registered['version']}: {decision['alias']}")
    log.info("done: %s v%s is %s (%s)", registered["model_name"], registered["version"], decision["alias"],
             decision["reason"])
    return summary


def render_report(s: dict[str, Any]) -> str:
    t = s["training"]
    lines = [
        f"# Retraining report: {s['model_name']} v{s['version']} -> **{s['alias']}**",
        "",
        f"* Decision: {s['reason']}",
        f"* Model: `{s['model_uri']}` (run `{s['run_id']}` in `{s['tracking_uri']}`)",
        f"* Base model: `{s['model']}`",
        f"* Data: {s['dataset']['counts']} (rejected {s['dataset']['rejected']}), dataset hash "
        f"`{s['dataset']['dataset_hash'][:16]}`, store `{s['dataset']['store_uri']}`",
        f"* Training: {t['steps']} steps in {t['train_minutes']:.1f} min ({t['stopped']}), "
        f"best at step {t['best_step']}; editor `{t['editor_uri']}`",
        f"* Scope: {scope_line(s['scope'])}",
        "",
        f"## Single edits ({s['evaluation']['n_single']} held-out records)",
        md_table(s["evaluation"]["tables"], ["method", "edit_success", "generalization", "locality",
                                             "edit_success_em", "edit_generated_em", "edit_success_pre",
                                             "seconds_per_edit"]),
        "",
        "## Simultaneous edits",
        md_table(s["evaluation"]["curve"], ["method", "k", "edit_success", "generalization", "locality"]),
        "",
        "## Plots",
        *[f"* {name}: `{path}`" for name, path in s["evaluation"]["files"].items() if path.endswith(".png")],
    ]
    return "\n".join(lines) + "\n"


def scope_line(scope: dict[str, Any] | None) -> str:
    """One line on the editor's scope (``fit-scope``'s record), for reports."""
    if scope is None:
        return "none (scope.enabled: false): the editor sums its corrections into the weights"
    chosen = scope["layer_choice"][str(scope["layer"])]
    return (f"block {scope['layer']}, threshold {scope['threshold']:.3f}; of {scope['n_val']} val records' rephrases "
            f"{chosen['recall']:.3f} switch their own correction on, of their locality prompts "
            f"{chosen['false_positives']['val']:.3f} switch any on")
