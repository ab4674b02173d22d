"""The ``mend`` command line: train, evaluate and apply editors.

    mend train configs/zsre-smollm2.yaml --set max_minutes=30
    mend eval --editor runs/zsre/best --data ../shared/data/zsre/zsre_mend_eval-dev-537.json
    mend edit --editor runs/zsre/best --prompt "The capital of France is" --target Rome
    mend retrain [--data edits.json] [--set train.max_minutes=30]   # the Prefect pipeline
    mend corrections submit|list|apply|rollback|show ...           # the corrections queue
    mend scope fit|attach ...                                      # scopes of routed corrections
    mend plan --config config.json --ranks 16 --nodes 2 --zero-stage 3 --device-gb 80
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mend.corrections.cli import app as corrections_app
from mend.distributed.cli import export_command, plan_command
from mend.overrides import parse_overrides
from mend.scope.cli import app as scope_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
app.add_typer(corrections_app, name="corrections")
app.add_typer(scope_app, name="scope")
console = Console()


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _parse_overrides(pairs: list[str]) -> dict:
    try:
        return parse_overrides(pairs)
    except ValueError as exc:
        raise typer.BadParameter(f"--set: {exc}") from exc


@app.command()
def train(
    config: Path = typer.Argument(..., exists=True, help="YAML training config"),
    set_: list[str] = typer.Option([], "--set", help="override a config field, e.g. --set lr=3e-4"),
    resume: bool = typer.Option(True, help="continue from output_dir/checkpoints/last if present"),
) -> None:
    """Meta-train an editor (single process)."""
    from mend.models.editable import EditableModel
    from mend.training.config import TrainConfig
    from mend.training.data import load_training_data
    from mend.training.trainer import Trainer

    _quiet_transformers()
    cfg = TrainConfig.from_yaml(config, _parse_overrides(set_))
    data = load_training_data(cfg.data, cfg.seed)
    for report in data.reports:
        console.print(f"data {report.path}: {report.n_loaded} loaded, {report.n_skipped} skipped")
        for error in report.errors[:10]:
            console.print(f"  [yellow]skipped[/] {error}")
    model = EditableModel.load(cfg.model, dtype=cfg.dtype, kind=None, patterns=cfg.editor.patterns)
    result = Trainer(cfg, model, data).train(resume=resume)
    console.print(
        f"[green]done[/] after {result.steps} steps ({result.train_minutes:.1f} min, {result.stopped}); "
        f"best {cfg.early_stop_metric}={result.best_metric} at step {result.best_step}; editor: {result.best_dir}"
    )


@app.command("eval")
def evaluate_cmd(
    data: Path = typer.Option(..., exists=True, help="records to edit (any supported format)"),
    editor: Path = typer.Option(None, help="editor directory (for --method mend)"),
    method: str = typer.Option("mend", help="mend | ft | ft_l | memit | alphaedit"),
    model: str = typer.Option(None, help="base model (default: the editor's)"),
    mode: str = typer.Option("single", help="single | batch | sequential"),
    k: int = typer.Option(1, help="edits per group for batch/sequential"),
    limit: int = typer.Option(None, help="evaluate the first N records"),
    locality_pool: Path = typer.Option(None, help="records whose locality probes FT+L may use"),
    out: Path = typer.Option(Path("runs/eval"), help="where the JSON/JSONL results go"),
    covariance_data: list[Path] = typer.Option(
        None, exists=True, help="memit/alphaedit: generic text for the keys' covariance (e.g. a WikiBio file; repeat)"),
    value_cache: Path = typer.Option(None, help="memit/alphaedit: keep the facts' values in this safetensors file"),
    set_: list[str] = typer.Option(
        None, "--set", help="memit/alphaedit settings, key=value (e.g. lam=3000, layers=[4,5,6], values.steps=10)"),
) -> None:
    """Evaluate MEND or a baseline (fine-tuning, MEMIT, AlphaEdit) on a dataset."""
    from mend.data import load_dataset
    from mend.editor.editor import Editor
    from mend.evaluation import FineTuneMethod, MendMethod, evaluate
    from mend.models.editable import EditableModel

    _quiet_transformers()
    records = load_dataset(data, limit=limit).records
    loaded_editor = Editor.load(editor) if editor else None
    source = model or (loaded_editor.base_model.get("source") if loaded_editor else None) or "smollm2-135m"
    patterns = loaded_editor.config.patterns if loaded_editor else None
    lm = EditableModel.load(source, patterns=patterns)
    if method == "mend":
        if loaded_editor is None:
            raise typer.BadParameter("--method mend needs --editor")
        edit_method = MendMethod(loaded_editor)
    elif method in ("ft", "ft_l"):
        pool = []
        if method == "ft_l":
            if locality_pool is None:
                raise typer.BadParameter("--method ft_l needs --locality-pool")
            pool = [p for r in load_dataset(locality_pool).records for p in r.locality]
        edit_method = FineTuneMethod(c_loc=1.0 if method == "ft_l" else 0.0, locality_pool=pool, name=method)
    elif method in ("memit", "alphaedit"):
        from mend.baselines.factory import baseline_method

        try:
            edit_method = baseline_method(method, covariance_data or [], _parse_overrides(set_ or []), value_cache)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    else:
        raise typer.BadParameter(f"unknown method {method!r}")
    report = evaluate(edit_method, lm, records, mode=mode, k=k)
    path = report.write(out)
    print_summary({method: report.summary})
    console.print(f"results: {path} (per-edit records beside it)")


def print_summary(summaries: dict[str, dict]) -> None:
    """A table with one row per method."""
    from mend.evaluation import METRICS

    table = Table()
    table.add_column("method")
    keys = [k for k in METRICS if any(k in s for s in summaries.values())]
    for key in keys:
        table.add_column(key, justify="right")
    for name, summary in summaries.items():
        table.add_row(name, *[f"{summary[k]:.3f}" if k in summary else "-" for k in keys])
    console.print(table)


@app.command()
def edit(
    editor: Path = typer.Option(..., exists=True),
    prompt: list[str] = typer.Option(..., help="edit prompt (repeat for a batch)"),
    target: list[str] = typer.Option(..., help="desired output (one per prompt)"),
    model: str = typer.Option(None, help="base model (default: smollm2-135m)"),
    save: Path = typer.Option(None, help="write the edit here"),
    peft: Path = typer.Option(None, help="also export it as a PEFT LoRA adapter here"),
) -> None:
    """Make one (batched) edit, show before/after answers, optionally save it."""
    from mend.editor.editor import Editor
    from mend.models.editable import EditableModel

    _quiet_transformers()
    ed = Editor.load(editor)
    lm = EditableModel.load(model or "smollm2-135m", patterns=ed.config.patterns)
    before = lm.generate(prompt, max_new_tokens=8)
    change = ed.edit(lm, prompt, target)
    with change.applied():
        after = lm.generate(prompt, max_new_tokens=8)
    for p, b, a in zip(prompt, before, after, strict=True):
        console.print(f"{p!r}: {b.strip()!r} -> {a.strip()!r}")
    if save:
        change.save(save)
        console.print(f"edit saved to {save}")
    if peft:
        change.to_peft(peft)
        console.print(f"PEFT adapter written to {peft}")


@app.command()
def demo(editor: Path = typer.Option(None, help="trained editor (default: identity editor)")) -> None:
    """Edit one fact in SmolLM2-135M and undo it."""
    from mend.demo import run_demo

    _quiet_transformers()
    run_demo(str(editor) if editor else None)


@app.command()
def retrain(
    config: Path = typer.Option(None, exists=True, help="pipeline YAML (default: configs/pipeline-default.yaml)"),
    data: list[str] = typer.Option([], "--data", help="editing data: a path or s3:// URI (repeatable)"),
    set_: list[str] = typer.Option([], "--set", help="override a pipeline field, e.g. --set train.max_minutes=30"),
    store: str = typer.Option(None, help="artifact store: a directory or s3://bucket/prefix"),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI"),
) -> None:
    """Run the retraining pipeline: prepare data, meta-train, fit the scope, evaluate, register, promote.

    The same as ``python -m flows``, run as a child process: the library does not import
    the flows (they depend on it, not the other way round).
    """
    argv = [f"--config={config}"] if config else []
    argv += [f"--data={d}" for d in data] + [f"--set={s}" for s in set_]
    argv += ([f"--store={store}"] if store else []) + ([f"--tracking-uri={tracking_uri}"] if tracking_uri else [])
    raise typer.Exit(subprocess.call([sys.executable, "-m", "flows", *argv]))


@app.command()
def info(editor: Path = typer.Argument(..., exists=True)) -> None:
    """Print an editor's metadata."""
    meta = json.loads((editor / "editor.json").read_text())
    meta.get("extra", {}).pop("train_config", None)
    console.print_json(data=meta)


# Distributed training: memory planner and DeepSpeed checkpoint conversion (the training
# entry point itself is run by the launchers: python -m mend.distributed.train).
app.command("plan")(plan_command)
app.command("export-deepspeed")(export_command)


if __name__ == "__main__":
    app()
