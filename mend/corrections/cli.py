"""``mend corrections``: the daily work on the queue.

    mend corrections submit fixes.jsonl            # or - for standard input
    mend corrections list [--state pending]
    mend corrections apply --editor runs/zsre/best
    mend corrections rollback --id fix-17 --reason "source was wrong"
    mend corrections rollback --to-version 3
    mend corrections show [VERSION]
    mend corrections adapter VERSION --out adapter/   # rebuilt from the version's deltas
    mend corrections prune-adapters --keep 10

The queue lives on an artifact store: ``--store`` (or ``$MEND_STORE``) is a local
directory or an ``s3://bucket/prefix`` URI.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mend.corrections.queue import STATES, CorrectionQueue
from mend.corrections.schema import read_submissions

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()

StoreOption = typer.Option(lambda: os.environ.get("MEND_STORE", "artifacts"), "--store", help="artifact store URI")
PrefixOption = typer.Option("corrections", "--prefix", help="queue prefix on the store")


def _queue(store: str, prefix: str) -> CorrectionQueue:
    from mend.storage import open_store

    return CorrectionQueue(open_store(store), prefix)


@app.command()
def submit(
    file: str = typer.Argument(..., help="JSON, JSON list or JSON Lines file; - for stdin"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
) -> None:
    """Validate and enqueue corrections; invalid ones go to dead-letter with the reason."""
    text = sys.stdin.read() if file == "-" else Path(file).read_text()
    report = _queue(store, prefix).submit(read_submissions(text))
    console.print(f"[green]{len(report.accepted)} pending[/], {len(report.dead_lettered)} dead-lettered")
    for key, reason in report.dead_lettered:
        console.print(f"  [yellow]dead-letter[/] {key}: {reason}")
    if report.dead_lettered:
        raise typer.Exit(code=1)


@app.command("list")
def list_(
    state: str = typer.Option(None, help=f"one of {', '.join(STATES)}; default: counts of all"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
) -> None:
    """Counts per state, or the records of one state with their reasons."""
    queue = _queue(store, prefix)
    if state is None:
        for name, count in queue.counts().items():
            console.print(f"{name:12s} {count}")
        return
    if state not in STATES:
        raise typer.BadParameter(f"state must be one of {STATES}")
    table = Table(title=state)
    for column in ("id", "prompt", "target", "detail"):
        table.add_column(column)
    for name in queue.ids(state):
        record = queue.read(state, name)
        if state == "pending":
            table.add_row(name, record["prompt"], record["target"], record["requested_by"])
        elif state == "dead-letter":
            raw = record["raw"]
            table.add_row(name, str(raw)[:60], "", record["reason"])
        else:
            c = record["correction"]
            detail = f"version {record.get('version')}" if state == "applied" else record.get("reason", "")
            table.add_row(name, c["prompt"], c["target"], detail)
    console.print(table)


@app.command()
def apply(
    editor: Path = typer.Option(..., exists=True, help="editor directory"),
    model: str = typer.Option(None, help="base model (default: the editor's)"),
    config: Path = typer.Option(
        None, exists=True,
        help="YAML ApplyConfig: batch_size, policy, regression_probes, regulariser_scale, passes, keep_adapters",
    ),
    batch_size: int = typer.Option(None, help="overrides the config's batch size"),
    regulariser_scale: float = typer.Option(
        None, help="overrides the config's: least-squares regularisers x this (>1: more locality)"
    ),
    passes: int = typer.Option(None, help="overrides the config's: captures per batch (more: edits land better)"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
) -> None:
    """Apply every pending correction now and publish new versions."""
    import yaml

    from mend.corrections.apply import ApplyConfig, apply_pending
    from mend.editor.editor import Editor
    from mend.models.editable import EditableModel

    given = (yaml.safe_load(config.read_text()) or {}) if config else {}
    flags = {"batch_size": batch_size, "regulariser_scale": regulariser_scale, "passes": passes}
    settings = ApplyConfig.model_validate({**given, **{k: v for k, v in flags.items() if v is not None}})
    ed = Editor.load(editor).eval()
    lm = EditableModel.load(model or ed.base_model.get("source") or "smollm2-135m", patterns=ed.config.patterns)
    report = apply_pending(_queue(store, prefix), lm, ed, settings,
                           details={"editor": {"path": str(editor)}}, log=console.print)
    console.print(f"published versions {report.versions}: {len(report.applied)} applied, "
                  f"{len(report.rejected)} rejected, {len(report.dead_lettered)} dead-lettered "
                  f"({report.seconds:.1f}s)")
    for cid, reason in report.rejected:
        console.print(f"  [yellow]rejected[/] {cid}: {reason}")


@app.command()
def rollback(
    id_: list[str] = typer.Option([], "--id", help="correction to take out (repeatable)"),
    to_version: int = typer.Option(None, help="restore the corrections of this version"),
    reason: str = typer.Option("", help="recorded in the new version's manifest"),
    requested_by: str = typer.Option(os.environ.get("USER", ""), help="who asked"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
) -> None:
    """Publish a new version without some corrections, or equal to an earlier version."""
    from mend.corrections.rollback import rollback as do_rollback

    version = do_rollback(_queue(store, prefix), correction_ids=id_, to_version=to_version,
                          reason=reason, requested_by=requested_by)
    console.print(f"published version {version}")


@app.command()
def show(
    version: int = typer.Argument(None, help="default: the latest"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
) -> None:
    """Print a published version's manifest."""
    from mend.corrections.versions import VersionStore

    versions = VersionStore(_queue(store, prefix).store, prefix)
    version = version if version is not None else versions.latest()
    if version is None:
        console.print("nothing published yet")
        raise typer.Exit(code=1)
    console.print_json(json.dumps(versions.manifest(version)))


@app.command()
def adapter(
    version: int = typer.Argument(..., help="published version"),
    out: Path = typer.Option(..., help="directory to write the PEFT adapter to"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
) -> None:
    """Write a version's corrections as a PEFT LoRA adapter, rebuilt from its deltas."""
    from mend.corrections.versions import VersionStore

    VersionStore(_queue(store, prefix).store, prefix).export_adapter(version, out)
    console.print(f"adapter of version {version} written to {out}")


@app.command("prune-adapters")
def prune_adapters(
    keep: int = typer.Option(..., min=1, help="keep the adapters of this many newest versions"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
) -> None:
    """Delete older versions' published PEFT adapters (their deltas stay: see ``adapter``)."""
    from mend.corrections.versions import VersionStore

    pruned = VersionStore(_queue(store, prefix).store, prefix).prune_adapters(keep)
    console.print(f"pruned the adapters of versions {pruned}" if pruned else "nothing to prune")
