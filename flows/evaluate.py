"""Flow ``evaluate``: the candidate editor against FT and FT+L, a multi-edit curve, plots.

    python -m flows.evaluate --manifest M.json --training T.json

Tables (single edits): edit success, generalization, locality (token-level, the gate
metrics), their exact-match and generated variants, and seconds per edit, for MEND,
FT and FT+L on the held-out test split. Curve: the same metrics for k simultaneous
edits. Plots (PNG): training curves and the multi-edit curve. Everything is written to
``<work_dir>/eval/<run_id>/`` and uploaded to ``editors/<run_id>/evaluation/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.common import (
    PERSIST,
    TRANSIENT,
    ConfigArg,
    Progress,
    fetch_editor,
    load_config,
    logger,
    markdown,
    md_table,
    store_for,
    table,
)
from mend.pipeline import data as pdata
from mend.pipeline import evaluation as peval
from mend.pipeline.training import load_trained


@task(name="run-evaluation", **PERSIST)
def run_evaluation(config: dict[str, Any], manifest: dict[str, Any], editor_dir: str, run_id: str) -> dict[str, Any]:
    cfg = load_config(config)
    log = logger()
    store = store_for(manifest["store_uri"])
    test = pdata.load_split(store, manifest, "test")
    train = pdata.load_split(store, manifest, "train")
    editor, model = load_trained(cfg, editor_dir)
    progress = Progress(f"evaluation-progress-{run_id}", f"evaluating {run_id}: MEND, FT, FT+L, multi-edit curve")
    last = {"what": None}

    def on_progress(what: str, fraction: float) -> None:
        progress(fraction)
        if what != last["what"]:
            last["what"] = what
            log.info("evaluating: %s (%.0f%% done)", what, 100 * fraction)

    result = peval.evaluate_candidate(model, editor, test, train, cfg.evaluation, progress=on_progress)
    progress(1.0, force=True)
    for name, summary in result["tables"].items():
        log.info("%s: edit_success=%.3f generalization=%.3f locality=%.3f (%.2f s/edit)", name,
                 summary.get("edit_success", float("nan")), summary.get("generalization", float("nan")),
                 summary.get("locality", float("nan")), summary.get("seconds_per_edit", float("nan")))
    return result


@task(name="write-evaluation", **TRANSIENT)
def write_evaluation(result: dict[str, Any], history: list[dict], out_dir: str, store_uri: str, run_id: str) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "tables": out / "tables.json",
        "curve": out / "curve.json",
        "rows": out / "rows.jsonl",
        "training_curves": peval.plot_training_curves(history, out / "training_curves.png"),
        "edit_curve": peval.plot_edit_curve(result["curve"], out / "edit_vs_simultaneous_edits.png"),
    }
    files["tables"].write_text(json.dumps(peval.table_rows(result["tables"]), indent=1))
    files["curve"].write_text(json.dumps(result["curve"], indent=1))
    with files["rows"].open("w") as f:
        for method, rows in result["rows"].items():
            for row in rows:
                f.write(json.dumps({"method": method, **row}) + "\n")
    store = store_for(store_uri)
    keys = {}
    for name, path in files.items():
        keys[name] = f"editors/{run_id}/evaluation/{Path(path).name}"
        store.put_file(keys[name], path)
    return {"files": {k: str(v) for k, v in files.items()}, "keys": keys}


@flow(name="evaluate")
def evaluate(manifest: dict[str, Any], training: dict[str, Any], config: ConfigArg = None,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the trained editor (``training`` from train-editor) on the test split."""
    cfg = load_config(config, overrides)
    run_id = training["run_id"]
    out_dir = Path(cfg.work_dir) / "eval" / run_id
    editor_dir = fetch_editor(training["store_uri"], training["editor_prefix"], str(out_dir / "editor"))
    result = run_evaluation(cfg.to_dict(), manifest, editor_dir, run_id)
    written = write_evaluation(result, training.get("history", []), str(out_dir), training["store_uri"], run_id)

    rows = peval.table_rows(result["tables"])
    held_out = f"{result['n_single']} held-out records"
    if result["n_baseline"] < result["n_single"]:
        held_out += f" (FT and FT+L: the first {result['n_baseline']})"
    table(f"evaluation-{run_id}", rows, f"single edits on {held_out}")
    table(f"edit-curve-{run_id}", result["curve"], f"k simultaneous edits on {result['n_curve']} records")
    markdown(
        f"evaluation-{run_id}",
        "\n".join([
            f"# Evaluation of `{run_id}`",
            f"{held_out}; token-level metrics (higher is better).",
            "",
            md_table(rows, ["method", "edit_success", "generalization", "locality", "edit_success_em",
                            "edit_generated_em", "edit_success_pre", "seconds_per_edit"]),
            "",
            "## Simultaneous edits",
            md_table(result["curve"], ["method", "k", "edit_success", "generalization", "locality"]),
            "",
            f"Plots: `{written['files']['training_curves']}`, `{written['files']['edit_curve']}`",
        ]),
        description="evaluation tables",
    )
    return {
        "tables": result["tables"], "curve": result["curve"], "n_single": result["n_single"],
        "n_baseline": result["n_baseline"], "n_curve": result["n_curve"], "seconds": result["seconds"], "run_id": run_id,
        "editor_dir": editor_dir, **written,
    }


if __name__ == "__main__":
    from flows.cli import run_single

    run_single(evaluate, needs=("manifest", "training"))
